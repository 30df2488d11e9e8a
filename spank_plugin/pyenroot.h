/*
 * Declarations shared by the plugin's files (see DEVELOPERS.md for the layout):
 *   spank_pyenroot.c  SPANK entry points, dispatch by context
 *   options.c         srun options, plugstack.conf arguments, PYXIS_CONTAINER_* fallbacks
 *   step.c            the step's commands: `pyenroot spank start|cleanup|epilog`, the anchor process
 *   spawn.c           running such a command as the job user (where root is given up), its result lines
 *   join.c            each task: environment, namespaces, seccomp, working directory
 *   common.c          Slurm-free helpers (lists, argv, environment blocks, result values); tests/ runs them
 *                     under AddressSanitizer
 */
#ifndef PYENROOT_SPANK_H
#define PYENROOT_SPANK_H

#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <slurm/spank.h>

#define PFX "pyenroot: "
#define RESULT_FD 3            /* the child writes its result lines here */
#define MAX_ENVIRON (16 << 20) /* /proc/PID/environ of the anchor; the kernel allows far less */
#define MAX_RESULTS (1 << 20)  /* everything the child may write on RESULT_FD */
/* srun -> every node's `spank start`: the image `spank fanout` broadcast (a value only the Python side reads) */
#define BROADCAST_VARIABLE "PYENROOT_BROADCAST"

/* ------------------------------------------------------------------------------------------ options.c */

struct options {
	char *image, *workdir, *name, *save, *env_names, *unshare;
	char *mounts;           /* comma-joined over repeated options; validated by the Python side */
	int mount_home, remap_root, entrypoint, entrypoint_log, writable;  /* -1: unset */
};

struct config {
	char runtime_path[512];
	char pyenroot[512];     /* empty: "pyenroot" on PATH */
	char importer[512];
	char container_scope[16];
	char fanout[8];         /* auto | sbcast | off: how a step's image reaches its nodes (pyenroot/slurm/fanout.py) */
	char fanout_shared[1024];  /* directories shared by all nodes whatever their filesystem type, ':'-separated */
	int remap_root, execute_entrypoint, sbatch_support, use_squashfuse;
};

extern struct options opt;
extern struct config cfg;
extern struct spank_option option_table[];

typedef const char *(*env_getter)(spank_t sp, const char *name, char *buf, size_t len);

int parse_bool(const char *s);
int parse_config(int ac, char **av);
int env_fallbacks(spank_t sp, env_getter get);
int enabled(void);
int fanout_wanted(void);
void warn_ignored(void);

/* ------------------------------------------------------------------------------------------ common.c */

int has_empty_element(const char *list);
int in_list(const char *list, const char *name, size_t len);

struct argv_builder {
	char **items;           /* NULL-terminated once anything was pushed */
	size_t n, cap;
	int failed;             /* an allocation failed: the argv must not be used */
};

void argv_push(struct argv_builder *a, const char *s);
void argv_push_opt(struct argv_builder *a, const char *flag, const char *value);
void argv_push_num(struct argv_builder *a, const char *flag, long value);
void argv_push_bool(struct argv_builder *a, const char *flag, int value);
void argv_free(struct argv_builder *a);

/* NUL-separated KEY=VALUE entries as in /proc/PID/environ; data[len] is always a NUL, so an entry never runs
 * past the buffer even when the last one has no NUL of its own. */
struct env_block {
	char *data;
	size_t len;
};

int env_block_read(const char *path, struct env_block *out);
const char *env_block_next(const struct env_block *b, size_t *offset);
const char *env_block_lookup(const struct env_block *b, const char *name);
void env_block_free(struct env_block *b);

struct env_sink {
	void (*set)(void *ctx, const char *name, const char *value, int overwrite);
	void (*unset)(void *ctx, const char *name);
	void *ctx;
};

int env_block_merge(const struct env_block *b, const char *keep, const struct env_sink *sink);
int job_variable_denied(const char *entry);
int step_pmix_variable(const char *entry);
int env_list_has(char *const *list, size_t n, const char *entry);
int parse_pid(const char *text, pid_t *out);
int parse_hex(const char *text, unsigned char **out, size_t *len);

/* ------------------------------------------------------------------------------------------ spank_pyenroot.c */

struct step {
	int enabled, failed, finalized, needs_cleanup;
	uid_t uid;
	gid_t gid;
	uint32_t jobid, stepid, local_tasks, exited_tasks;
	pid_t anchor, join;
	int anchor_pidfd;       /* -1: none (not started, or a kernel without pidfd_open) */
	struct env_block environ_block;  /* of the anchor */
	char cwd[4096];
	char unlink_path[4096];  /* "unlink PATH": a file of the step's (srun's broadcast copy) removed at step end */
	unsigned char *bpf;
	size_t bpf_len;
	gid_t *gids;
	int ngids;
};

extern struct step st;

/* ------------------------------------------------------------------------------------------ spawn.c */

struct child {
	pid_t pid;
	int pidfd;  /* -1 when the kernel has no pidfd_open */
};

int spawn(spank_t sp, struct argv_builder *args, struct child *child, int *log_fd, int *result_fd);
int spawn_local(struct argv_builder *args, struct child *child, int *log_fd, int *result_fd);
int wait_child(const struct child *c, int options);
void kill_child(struct child *c);
void read_results(int fd);
void show_log(int logfd, int as_errors);
int run_to_end(spank_t sp, struct argv_builder *args);
void unlink_as_user(const char *const *paths, int n);

/* ------------------------------------------------------------------------------------------ step.c */

void broadcast_image(spank_t sp);
void start_container(spank_t sp);
void finalize(spank_t sp);
void forget_job_images(void);
void run_epilog(void);

/* ------------------------------------------------------------------------------------------ join.c */

int enter_container(spank_t sp);

#endif
