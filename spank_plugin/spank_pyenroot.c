/*
 * spank_pyenroot: srun/sbatch --container-* options (pyxis compatible) backed by the pyenroot CLI.
 *
 * The plugin only checks options, execs `pyenroot spank start` as the job user once per step and node
 * (which imports/creates/starts the container and leaves a stopped anchor process), and makes every task
 * join the anchor's namespaces before exec. Every decision about images, names, mounts and environment is
 * made by the Python side; see pyenroot/slurm/step.py for the other half of the protocol.
 *
 * Protocol: the child gets a pipe on fd 3 and writes lines "log TEXT" (shown to the user), "info TEXT"
 * (slurmd log), "error TEXT" (shown, step fails), "join PID" (namespaces to join instead of the anchor's),
 * "seccomp HEX" (a classic BPF program installed in each task), "cleanup 1" (run `pyenroot spank cleanup` at
 * step end; otherwise the plugin only deletes the step's two files itself). It then becomes the container's anchor,
 * a shell that stops itself; its environment and cwd are the tasks' environment and default cwd.
 *
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <slurm/spank.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PFX "pyenroot: "
#define RESULT_FD 3            /* the child writes its result lines here */
#define MAX_ENVIRON (16 << 20) /* /proc/PID/environ of the anchor; the kernel allows far less */
#define MAX_RESULTS (1 << 20)  /* everything the child may write on RESULT_FD */

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
int wait_child(const struct child *c, int options);
void kill_child(struct child *c);
void read_results(int fd);
void show_log(int logfd, int as_errors);
int run_to_end(spank_t sp, struct argv_builder *args);
void unlink_as_user(const char *const *paths, int n);

/* ------------------------------------------------------------------------------------------ step.c */

void start_container(spank_t sp);
void finalize(spank_t sp);
void run_epilog(void);

/* ------------------------------------------------------------------------------------------ join.c */

int enter_container(spank_t sp);

/*
 * Helpers without Slurm calls: comma lists, argv building, environment blocks, values from result lines.
 * Their input comes from the user (options, the container's environment, the result pipe of a process the user
 * could trace), and they run inside root's slurmstepd: every length is bounded, every allocation checked.
 * tests/hostile.c feeds them hostile input under AddressSanitizer.
 */

/* ------------------------------------------------------------------------------------------ comma lists */

int has_empty_element(const char *list)
{
	size_t n = strlen(list);
	return n == 0 || list[0] == ',' || list[n - 1] == ',' || strstr(list, ",,") != NULL;
}

int in_list(const char *list, const char *name, size_t len)
{
	const char *p = list;

	while (p && *p) {
		size_t n = strcspn(p, ",");
		if (n == len && !strncmp(p, name, len))
			return 1;
		p += n + (p[n] == ',');
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------ argv */

void argv_push(struct argv_builder *a, const char *s)
{
	char *copy;

	if (a->failed)
		return;
	if (a->n + 2 > a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 32;
		char **bigger = realloc(a->items, cap * sizeof(char *));
		if (!bigger) {
			a->failed = 1;
			return;
		}
		a->items = bigger;
		a->cap = cap;
	}
	if ((copy = strdup(s)) == NULL) {
		a->failed = 1;
		return;
	}
	a->items[a->n++] = copy;
	a->items[a->n] = NULL;
}

void argv_push_opt(struct argv_builder *a, const char *flag, const char *value)
{
	if (value) {
		argv_push(a, flag);
		argv_push(a, value);
	}
}

void argv_push_num(struct argv_builder *a, const char *flag, long value)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%ld", value);
	argv_push_opt(a, flag, buf);
}

/* "y"/"n": the Python side reads them with config.is_true, like every other switch. */
void argv_push_bool(struct argv_builder *a, const char *flag, int value)
{
	argv_push_opt(a, flag, value ? "y" : "n");
}

void argv_free(struct argv_builder *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->items[i]);
	free(a->items);
	*a = (struct argv_builder){ 0 };
}

/* ------------------------------------------------------------------------------------------ environment blocks */

/* Read a whole file (at most MAX_ENVIRON bytes) and NUL-terminate it: /proc/PID/environ has no NUL after its
 * last entry when the process rewrote its environment. */
int env_block_read(const char *path, struct env_block *out)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t cap = 8192, len = 0;
	char *buf = NULL, *small;
	ssize_t n;

	*out = (struct env_block){ 0 };
	if (fd < 0 || (buf = malloc(cap + 1)) == NULL)
		goto fail;
	for (;;) {
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto fail;
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == cap) {
			char *bigger;
			if (cap >= MAX_ENVIRON) {
				errno = EFBIG;
				goto fail;
			}
			cap *= 2;
			if ((bigger = realloc(buf, cap + 1)) == NULL)
				goto fail;
			buf = bigger;
		}
	}
	close(fd);
	buf[len] = '\0';
	if ((small = realloc(buf, len + 1)) != NULL)
		buf = small;  /* exactly len + 1 bytes: a sanitizer sees any read past the terminator */
	out->data = buf;
	out->len = len;
	return 0;
fail:
	if (fd >= 0) {
		int saved = errno;
		close(fd);
		errno = saved;
	}
	free(buf);
	return -1;
}

/* The entry at *offset (empty entries skipped), advancing *offset past it; NULL after the last one. */
const char *env_block_next(const struct env_block *b, size_t *offset)
{
	while (b->data && *offset < b->len) {
		const char *entry = b->data + *offset;
		size_t n = strnlen(entry, b->len - *offset);
		*offset += n + 1;
		if (n > 0)
			return entry;
	}
	return NULL;
}

const char *env_block_lookup(const struct env_block *b, const char *name)
{
	size_t len = strlen(name), offset = 0;
	const char *entry;

	while ((entry = env_block_next(b, &offset)) != NULL)
		if (!strncmp(entry, name, len) && entry[len] == '=')
			return entry + len + 1;
	return NULL;
}

void env_block_free(struct env_block *b)
{
	free(b->data);
	*b = (struct env_block){ 0 };
}

/* The task environment from the anchor's: the container's value wins, except for the names in `keep` (the
 * user's --container-env), whose host values stay. Locale variables the container does not set are removed, so
 * that a host locale the image lacks does not break it. -1 only when out of memory. */
int env_block_merge(const struct env_block *b, const char *keep, const struct env_sink *sink)
{
	static const char *const locale[] = { "LANG", "LANGUAGE", "LC_ALL", NULL };
	size_t offset = 0;
	const char *entry;

	for (int i = 0; locale[i]; i++)
		if (!in_list(keep, locale[i], strlen(locale[i])) && !env_block_lookup(b, locale[i]))
			sink->unset(sink->ctx, locale[i]);
	while ((entry = env_block_next(b, &offset)) != NULL) {
		const char *eq = strchr(entry, '=');
		char *name;

		if (!eq || eq == entry)
			continue;  /* not KEY=VALUE */
		if ((name = strndup(entry, (size_t)(eq - entry))) == NULL)
			return -1;
		sink->set(sink->ctx, name, eq + 1, !in_list(keep, name, (size_t)(eq - entry)));
		free(name);
	}
	return 0;
}

/* Job variables that must not reach pyenroot: node settings come from the node, task identity from the task. */
int job_variable_denied(const char *entry)
{
	static const char *const names[] = {
		"PATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_TASK_PID",
		"PMIX_RANK", "PMI_FD", "ENROOT_LIBRARY_PATH", "ENROOT_SYSCONF_PATH", "ENROOT_RUNTIME_PATH",
		"ENROOT_TEMP_PATH", "ENROOT_ZSTD_OPTIONS", "ENROOT_TRANSFER_RETRIES", "ENROOT_CONNECT_TIMEOUT",
		"ENROOT_MAX_CONNECTIONS", "XDG_RUNTIME_DIR", "PYENROOT_SPANK_RESULT_FD",
		/* pyenroot is a Python program installed by the site: the job's Python settings are not for it. */
		"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONINSPECT", NULL,
	};
	size_t len = strcspn(entry, "=");

	if (entry[len] != '=')
		return 1;  /* not KEY=VALUE */
	for (int i = 0; names[i]; i++)
		if (strlen(names[i]) == len && !strncmp(entry, names[i], len))
			return 1;
	return 0;
}

/* ------------------------------------------------------------------------------------------ result values */

int parse_pid(const char *text, pid_t *out)
{
	char *end;
	long value;

	if (*text < '0' || *text > '9')
		return -1;  /* strtol would take leading blanks and signs */
	errno = 0;
	value = strtol(text, &end, 10);
	if (errno || end == text || *end != '\0' || value <= 0 || value > 0x3fffffff)
		return -1;
	*out = (pid_t)value;
	return 0;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Hex text to bytes; -1 (and nothing allocated) for an odd length or a non-hex character. */
int parse_hex(const char *text, unsigned char **out, size_t *len)
{
	size_t n = strlen(text);
	unsigned char *bytes;

	*out = NULL;
	*len = 0;
	if (n % 2 != 0)
		return -1;
	if ((bytes = malloc(n / 2 + 1)) == NULL)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		int hi = hex_digit(text[2 * i]), lo = hex_digit(text[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			free(bytes);
			return -1;
		}
		bytes[i] = (unsigned char)(hi << 4 | lo);
	}
	*out = bytes;
	*len = n / 2;
	return 0;
}

/*
 * The srun/sbatch --container-* options (pyxis's table and messages), the plugstack.conf arguments and the
 * PYXIS_CONTAINER_* / PYENROOT_CONTAINER_* fallbacks. Handlers check only what needs no knowledge of images,
 * mounts or the node; everything else (mount grammar included) is checked once, by `pyenroot spank start`.
 */

struct options opt = { .mount_home = -1, .remap_root = -1, .entrypoint = -1, .entrypoint_log = -1,
		       .writable = -1 };
struct config cfg = { .runtime_path = "/run/pyenroot", .container_scope = "global", .remap_root = -1,
		      .execute_entrypoint = 0, .sbatch_support = 1, .use_squashfuse = 1 };

/* ------------------------------------------------------------------------------------------ handlers */

static int required(const char *flag, const char *value)
{
	if (value == NULL || *value == '\0') {
		slurm_error(PFX "--%s: argument required", flag);
		return -1;
	}
	return 0;
}

static int set_string(char **slot, const char *flag, const char *value)
{
	if (required(flag, value))
		return -1;
	if (*slot != NULL) {
		/* Slurm may call an option callback twice with the same value. */
		if (strcmp(*slot, value) == 0)
			return 0;
		slurm_error(PFX "--%s specified multiple times", flag);
		return -1;
	}
	if ((*slot = strdup(value)) == NULL) {
		slurm_error(PFX "--%s: out of memory", flag);
		return -1;
	}
	return 0;
}

static int set_bool(int *slot, int value, const char *yes, const char *no)
{
	if (*slot != -1 && *slot != value) {
		slurm_error(PFX "both --%s and --%s were specified", yes, no);
		return -1;
	}
	*slot = value;
	return 0;
}

/* Repeated --container-mounts accumulate; the Python side parses the joined list. */
static int add_mounts(const char *value)
{
	char *joined;

	if (required("container-mounts", value))
		return -1;
	if (opt.mounts && strcmp(opt.mounts, value) == 0)
		return 0;  /* the same value delivered twice */
	if (opt.mounts == NULL)
		joined = strdup(value);
	else if (asprintf(&joined, "%s,%s", opt.mounts, value) < 0)
		joined = NULL;
	if (joined == NULL) {
		slurm_error(PFX "--container-mounts: out of memory");
		return -1;
	}
	free(opt.mounts);
	opt.mounts = joined;
	return 0;
}

static int cb_image(int val, const char *arg, int remote) { return set_string(&opt.image, "container-image", arg); }
static int cb_mounts(int val, const char *arg, int remote) { return add_mounts(arg); }
static int cb_workdir(int val, const char *arg, int remote)
{
	return set_string(&opt.workdir, "container-workdir", arg);
}

static int cb_name(int val, const char *arg, int remote)
{
	const char *colon;

	if (arg == NULL || *arg == '\0' || *arg == ':') {
		slurm_error(PFX "--container-name: empty name");
		return -1;
	}
	colon = strchr(arg, ':');
	if (colon && strcmp(colon + 1, "auto") && strcmp(colon + 1, "create") && strcmp(colon + 1, "exec") &&
	    strcmp(colon + 1, "no_exec")) {
		slurm_error(PFX "--container-name: flag must be \"auto\", \"create\", \"exec\" or \"no_exec\"");
		return -1;
	}
	return set_string(&opt.name, "container-name", arg);
}

static int cb_save(int val, const char *arg, int remote)
{
	if (arg && *arg && arg[strlen(arg) - 1] == '/') {
		slurm_error(PFX "--container-save: target is a directory");
		return -1;
	}
	return set_string(&opt.save, "container-save", arg);
}

static int cb_env(int val, const char *arg, int remote)
{
	if (arg && *arg && has_empty_element(arg)) {
		slurm_error(PFX "--container-env: invalid format: %s", arg);
		return -1;
	}
	return set_string(&opt.env_names, "container-env", arg);
}

static int cb_unshare(int val, const char *arg, int remote)
{
	const char *p;

	if (arg == NULL || has_empty_element(arg)) {
		slurm_error(PFX "--container-unshare: empty namespace argument");
		return -1;
	}
	for (p = arg; *p; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) {
		size_t n = strcspn(p, ",");
		if (!in_list("net,ipc,uts", p, n)) {
			slurm_error(PFX "--container-unshare: unknown namespace '%.*s'", (int)(n < 256 ? n : 256), p);
			return -1;
		}
	}
	return set_string(&opt.unshare, "container-unshare", arg);
}

enum { B_MOUNT_HOME = 1, B_NO_MOUNT_HOME, B_REMAP, B_NO_REMAP, B_ENTRY, B_NO_ENTRY, B_WRITABLE, B_READONLY };

static int cb_bool(int val, const char *arg, int remote)
{
	switch (val) {
	case B_MOUNT_HOME:
	case B_NO_MOUNT_HOME:
		return set_bool(&opt.mount_home, val == B_MOUNT_HOME, "container-mount-home", "no-container-mount-home");
	case B_REMAP:
	case B_NO_REMAP:
		return set_bool(&opt.remap_root, val == B_REMAP, "container-remap-root", "no-container-remap-root");
	case B_ENTRY:
	case B_NO_ENTRY:
		return set_bool(&opt.entrypoint, val == B_ENTRY, "container-entrypoint", "no-container-entrypoint");
	case B_WRITABLE:
	case B_READONLY:
		return set_bool(&opt.writable, val == B_WRITABLE, "container-writable", "container-readonly");
	}
	return -1;
}

static int cb_entrypoint_log(int val, const char *arg, int remote)
{
	opt.entrypoint_log = 1;
	return 0;
}

struct spank_option option_table[] = {
	{ "container-image", "[USER@][REGISTRY#]IMAGE[:TAG]|PATH",
	  "[pyenroot] the image to use for the container filesystem. Can be either a docker image given as an "
	  "enroot URI, or a path to a squashfs file on the remote host filesystem.", 1, 0, cb_image },
	{ "container-mounts", "SRC:DST[:FLAGS][,SRC:DST...]",
	  "[pyenroot] bind mount[s] inside the container. Mount flags are separated with \"+\", e.g. \"ro+rprivate\"",
	  1, 0, cb_mounts },
	{ "container-workdir", "PATH", "[pyenroot] working directory inside the container", 1, 0, cb_workdir },
	{ "container-name", "NAME[:FLAG]",
	  "[pyenroot] name to use for saving and loading the container on the host. Unnamed containers are "
	  "removed after the slurm task is complete; named containers are not. If a container with this name "
	  "already exists, the existing container is used and the import is skipped. FLAG: auto (default), "
	  "create, exec or no_exec", 1, 0, cb_name },
	{ "container-save", "PATH",
	  "[pyenroot] save the container state to a squashfs file on the remote host filesystem", 1, 0, cb_save },
	{ "container-mount-home", NULL, "[pyenroot] bind mount the user's home directory", 0, B_MOUNT_HOME, cb_bool },
	{ "no-container-mount-home", NULL, "[pyenroot] do not bind mount the user's home directory", 0,
	  B_NO_MOUNT_HOME, cb_bool },
	{ "container-remap-root", NULL, "[pyenroot] ask to be remapped to root inside the container", 0, B_REMAP,
	  cb_bool },
	{ "no-container-remap-root", NULL, "[pyenroot] do not remap to root inside the container", 0, B_NO_REMAP,
	  cb_bool },
	{ "container-entrypoint", NULL, "[pyenroot] execute the entrypoint from the container image", 0, B_ENTRY,
	  cb_bool },
	{ "no-container-entrypoint", NULL, "[pyenroot] do not execute the entrypoint from the container image", 0,
	  B_NO_ENTRY, cb_bool },
	{ "container-entrypoint-log", NULL, "[pyenroot] print the output of the entrypoint script", 0, 0,
	  cb_entrypoint_log },
	{ "container-writable", NULL, "[pyenroot] make the container filesystem writable", 0, B_WRITABLE, cb_bool },
	{ "container-readonly", NULL, "[pyenroot] make the container filesystem read-only", 0, B_READONLY, cb_bool },
	{ "container-env", "NAME[,NAME...]",
	  "[pyenroot] names of environment variables to override with the host environment and set at the "
	  "entrypoint. By default, all exported host environment variables are set in the container after the "
	  "entrypoint is run, but their existing values in the image take precedence; the variables specified "
	  "with this flag are preserved from the host and set before the entrypoint runs", 1, 0, cb_env },
	{ "container-unshare", "NS[,NS...]",
	  "[pyenroot] namespaces to unshare from the host: net, ipc, uts", 1, 0, cb_unshare },
	SPANK_OPTIONS_TABLE_END
};

/* ------------------------------------------------------------------------------------------ plugstack.conf */

/* 1, 0, or -1 for a word that is neither. Every word config.is_true takes as off (the Python side's rule, from
 * enroot) is off here too, in the same spellings, and so is pyxis's "0". Unlike is_true, which takes any other
 * word as on, only the matching "on" words are on: a typo in plugstack.conf stops the plugin instead of
 * switching something on. */
int parse_bool(const char *s)
{
	static const char *const off[] = { "0", "n", "N", "no", "No", "NO", "f", "F", "false", "False", "FALSE", NULL };
	static const char *const on[] = { "1", "y", "Y", "yes", "Yes", "YES", "t", "T", "true", "True", "TRUE", NULL };

	for (int i = 0; off[i]; i++)
		if (!strcmp(s, off[i]))
			return 0;
	for (int i = 0; on[i]; i++)
		if (!strcmp(s, on[i]))
			return 1;
	return -1;
}

static int copy_value(char *dst, size_t size, const char *key, const char *value)
{
	if (strlen(value) >= size) {
		slurm_error(PFX "%s: value too long", key);
		return -1;
	}
	strcpy(dst, value);
	return 0;
}

static int *config_flag(const char *key)
{
	if (!strcmp(key, "remap_root"))
		return &cfg.remap_root;
	if (!strcmp(key, "execute_entrypoint"))
		return &cfg.execute_entrypoint;
	if (!strcmp(key, "sbatch_support"))
		return &cfg.sbatch_support;
	if (!strcmp(key, "use_squashfuse"))
		return &cfg.use_squashfuse;
	return NULL;
}

static int parse_argument(const char *arg)
{
	const char *eq = strchr(arg, '=');
	const char *value = eq ? eq + 1 : "";
	size_t klen = eq ? (size_t)(eq - arg) : strlen(arg);
	char key[64];
	int *flag, b;

	if (klen >= sizeof(key)) {
		slurm_error(PFX "unknown configuration option: %.64s...", arg);
		return -1;
	}
	memcpy(key, arg, klen);
	key[klen] = '\0';
	if (!strcmp(key, "runtime_path"))
		return copy_value(cfg.runtime_path, sizeof(cfg.runtime_path), key, value);
	if (!strcmp(key, "pyenroot"))
		return copy_value(cfg.pyenroot, sizeof(cfg.pyenroot), key, value);
	if (!strcmp(key, "importer"))
		return copy_value(cfg.importer, sizeof(cfg.importer), key, value);
	if (!strcmp(key, "use_enroot_load"))
		return 0;  /* accepted for pyxis configurations; pyenroot always imports through its cache */
	if (!strcmp(key, "container_scope")) {
		if (strcmp(value, "job") && strcmp(value, "global")) {
			slurm_error(PFX "%s: invalid value: %s", key, value);
			return -1;
		}
		return copy_value(cfg.container_scope, sizeof(cfg.container_scope), key, value);
	}
	if ((flag = config_flag(key)) == NULL) {
		slurm_error(PFX "unknown configuration option: %s", arg);
		return -1;
	}
	if ((b = parse_bool(value)) < 0) {
		slurm_error(PFX "%s: invalid value: %s", key, value);
		return -1;
	}
	*flag = b;
	return 0;
}

int parse_config(int ac, char **av)
{
	for (int i = 0; i < ac; i++)
		if (parse_argument(av[i]))
			return -1;
	return 0;
}

/* ------------------------------------------------------------------------------------------ environment fallbacks */

/* PYXIS_CONTAINER_X, or the PYENROOT_CONTAINER_X spelling. */
static const char *container_env(spank_t sp, env_getter get, const char *suffix, char *buf, size_t len)
{
	char name[64];
	const char *value;

	snprintf(name, sizeof(name), "PYXIS_CONTAINER_%s", suffix);
	if ((value = get(sp, name, buf, len)) != NULL && *value)
		return value;
	snprintf(name, sizeof(name), "PYENROOT_CONTAINER_%s", suffix);
	if ((value = get(sp, name, buf, len)) != NULL && *value)
		return value;
	return NULL;
}

/* pyxis: an invalid value is ignored, the option stays unset. */
static void env_bool(spank_t sp, env_getter get, const char *suffix, int *slot, int invert)
{
	char buf[64];
	const char *value = container_env(sp, get, suffix, buf, sizeof(buf));
	int b;

	if (value && *slot == -1 && (b = parse_bool(value)) >= 0)
		*slot = invert ? !b : b;
}

int env_fallbacks(spank_t sp, env_getter get)
{
	char buf[8192];
	const char *v;
	int rv = 0;

	if (!opt.image && (v = container_env(sp, get, "IMAGE", buf, sizeof(buf))))
		rv |= cb_image(0, v, 0);
	if (!opt.mounts && (v = container_env(sp, get, "MOUNTS", buf, sizeof(buf))))
		rv |= add_mounts(v);
	if (!opt.workdir && (v = container_env(sp, get, "WORKDIR", buf, sizeof(buf))))
		rv |= cb_workdir(0, v, 0);
	if (!opt.name && (v = container_env(sp, get, "NAME", buf, sizeof(buf))))
		rv |= cb_name(0, v, 0);
	if (!opt.save && (v = container_env(sp, get, "SAVE", buf, sizeof(buf))))
		rv |= cb_save(0, v, 0);
	if (!opt.env_names && (v = container_env(sp, get, "ENV", buf, sizeof(buf))))
		rv |= cb_env(0, v, 0);
	if (!opt.unshare && (v = container_env(sp, get, "UNSHARE", buf, sizeof(buf))))
		rv |= cb_unshare(0, v, 0);
	env_bool(sp, get, "MOUNT_HOME", &opt.mount_home, 0);
	env_bool(sp, get, "REMAP_ROOT", &opt.remap_root, 0);
	env_bool(sp, get, "ENTRYPOINT", &opt.entrypoint, 0);
	env_bool(sp, get, "ENTRYPOINT_LOG", &opt.entrypoint_log, 0);
	env_bool(sp, get, "WRITABLE", &opt.writable, 0);
	env_bool(sp, get, "READONLY", &opt.writable, 1);
	return rv ? -1 : 0;
}

int enabled(void)
{
	return opt.image != NULL || opt.name != NULL;
}

void warn_ignored(void)
{
	const struct { const char *flag; int set; } given[] = {
		{ "--container-mounts", opt.mounts != NULL },
		{ "--container-workdir", opt.workdir != NULL },
		{ "--container-save", opt.save != NULL },
		{ "--[no-]container-mount-home", opt.mount_home != -1 },
		{ "--[no-]container-remap-root", opt.remap_root != -1 },
		{ "--[no-]container-entrypoint", opt.entrypoint != -1 },
		{ "--container-entrypoint-log", opt.entrypoint_log == 1 },
		{ "--container-writable/--container-readonly", opt.writable != -1 },
	};

	for (size_t i = 0; i < sizeof(given) / sizeof(given[0]); i++)
		if (given[i].set)
			slurm_error(PFX "ignoring %s because neither --container-image nor --container-name is set",
				    given[i].flag);
}

/*
 * Running the Python side: `pyenroot spank start|cleanup|epilog ...`, as the job user, and its result lines.
 *
 * Where the plugin is root, and where it stops being root:
 *   - slurmd (slurm_spank_init) creates runtime_path (0755) as root; slurmstepd (init_post_opt) creates
 *     runtime_path/UID (0700, chowned to the job user). Nothing else is written as root.
 *   - slurmstepd, once per step and node (user_init, privileges dropped only temporarily), at step end
 *     (task_exit/exit) and slurmd's job epilog (where fds 0-2 may be closed) fork a child that becomes the job
 *     user before it execs pyenroot: seteuid(0), setgroups(the job's groups), setregid, setreuid, then a check
 *     that real, effective and saved uid and gid and the group list are exactly the job's. Any failure ends the
 *     child with 126 and a message in its log; it never runs pyenroot with other credentials. The short child
 *     that deletes a step's two files (remove_step_files) switches the same way.
 *   - The child's environment is the job's minus node and Python settings (job_variable_denied) and gets
 *     stdin /dev/null, stdout/stderr in a memfd (the log), fd 3 the result pipe; every other fd is closed.
 *   - The parent stays root and reads what the user's process produced: the result lines (at most MAX_RESULTS
 *     bytes, values checked by parse_pid/parse_hex), the anchor's /proc/PID/environ (at most MAX_ENVIRON bytes)
 *     and cwd. It signals and waits for the anchor through a pidfd opened while the anchor was its unreaped
 *     child, so a PID that slurmstepd reaped and the kernel gave to another process is never signalled.
 *   - Each task (join.c) runs as the job user already: it joins the anchor's namespaces and installs the
 *     seccomp program the Python side sent; both only affect the user's own task.
 */

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#define WAIT_PIDFD ((idtype_t)3)  /* P_PIDFD, Linux 5.4 */
#define CHILD_SETUP_FAILED 126

/* ------------------------------------------------------------------------------------------ the child */

/* A line in the child's log (fd 2 once exec_child set it up; -1: no log, the exit code tells). */
static void child_message(int fd, const char *what, int err)
{
	const char *reason = strerror(err);

	if (fd < 0)
		return;
	(void)!write(fd, "pyenroot plugin: ", 17);
	(void)!write(fd, what, strlen(what));
	(void)!write(fd, ": ", 2);
	(void)!write(fd, reason, strlen(reason));
	(void)!write(fd, "\n", 1);
}

static int has_group(const gid_t *list, int n, gid_t gid)
{
	for (int i = 0; i < n; i++)
		if (list[i] == gid)
			return 1;
	return 0;
}

/* Become the job user for good, or fail; `seen` has room for st.ngids + 1 groups (allocated before fork), `log`
 * gets the reason. */
static int become_user(gid_t *seen, int log)
{
	uid_t ruid, euid, suid;
	gid_t rgid, egid, sgid;
	int n;

	if (geteuid() != 0 && seteuid(0) < 0) {
		child_message(log, "couldn't regain root to switch users", errno);
		return -1;
	}
	if (setgroups((size_t)st.ngids, st.gids) < 0) {
		child_message(log, "couldn't set the job's groups", errno);
		return -1;
	}
	if (setregid(st.gid, st.gid) < 0 || setreuid(st.uid, st.uid) < 0) {
		child_message(log, "couldn't switch to the job user", errno);
		return -1;
	}
	/* Verify: setreuid leaves the saved ids alone in corner cases, and a wrong group list gives file access. */
	if (getresuid(&ruid, &euid, &suid) < 0 || getresgid(&rgid, &egid, &sgid) < 0 ||
	    ruid != st.uid || euid != st.uid || suid != st.uid || rgid != st.gid || egid != st.gid || sgid != st.gid) {
		child_message(log, "the user or group did not change as asked", EPERM);
		return -1;
	}
	n = getgroups(st.ngids + 1, seen);
	if (n != st.ngids) {
		child_message(log, "the group list did not change as asked", EPERM);
		return -1;
	}
	for (int i = 0; i < n; i++)
		if (!has_group(st.gids, st.ngids, seen[i])) {
			child_message(log, "the group list did not change as asked", EPERM);
			return -1;
		}
	return 0;
}

/* slurmstepd blocks and ignores signals in its threads; pyenroot and the container (and helpers such as
 * squashfuse, which must see SIGTERM when the anchor dies) need the defaults back. */
static void reset_signals(void)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	sigset_t none;

	for (int sig = 1; sig < NSIG; sig++)
		(void)sigaction(sig, &dfl, NULL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

/* In the child: fds 0-3 from the parent's (all above 3, so no dup2 overwrites another's source), the rest
 * closed, default signals, the job user, exec. Never returns. */
static void exec_child(struct argv_builder *args, char **env, int devnull, int logfd, int result_fd, gid_t *seen)
{
	const char *program = cfg.pyenroot[0] ? cfg.pyenroot : "pyenroot";
	int oom;

	if (dup2(devnull, STDIN_FILENO) < 0 || dup2(logfd, STDOUT_FILENO) < 0 || dup2(logfd, STDERR_FILENO) < 0 ||
	    dup2(result_fd, RESULT_FD) < 0)
		_exit(CHILD_SETUP_FAILED);
	if (syscall(SYS_close_range, RESULT_FD + 1, ~0U, 0) < 0)
		for (int fd = RESULT_FD + 1; fd < 65536; fd++)
			close(fd);
	/* slurmstepd exempts itself from the OOM killer; the container is an ordinary part of the job. */
	if ((oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC)) >= 0) {
		(void)!write(oom, "0", 1);
		close(oom);
	}
	reset_signals();
	if (become_user(seen, STDERR_FILENO) < 0)
		_exit(CHILD_SETUP_FAILED);
	if (cfg.pyenroot[0])
		execve(program, args->items, env);
	else
		execvpe(program, args->items, env);
	child_message(STDERR_FILENO, program, errno);
	_exit(127);
}

/* ------------------------------------------------------------------------------------------ the parent */

static char **child_environment(spank_t sp)
{
	char **job_env = NULL, **env;
	size_t n = 0, k = 0;
	const char *path = getenv("PATH");
	int failed = 0;

	if (sp && spank_get_item(sp, S_JOB_ENV, &job_env) != ESPANK_SUCCESS)
		job_env = NULL;
	while (job_env && job_env[n])
		n++;
	if ((env = calloc(n + 6, sizeof(char *))) == NULL)
		return NULL;
	for (size_t i = 0; i < n && !failed; i++)
		if (!job_variable_denied(job_env[i]))
			failed |= (env[k++] = strdup(job_env[i])) == NULL;
	failed = failed || asprintf(&env[k++], "PATH=%s", path && *path ? path : "/usr/local/bin:/usr/bin:/bin") < 0 ||
		 asprintf(&env[k++], "SLURM_JOB_UID=%u", (unsigned)st.uid) < 0 ||
		 asprintf(&env[k++], "SLURM_JOB_GID=%u", (unsigned)st.gid) < 0 ||
		 /* Node-local runtime space: two nodes of one step share homes (NFS) but never this directory. */
		 asprintf(&env[k++], "XDG_RUNTIME_DIR=%s/%u", cfg.runtime_path, (unsigned)st.uid) < 0 ||
		 asprintf(&env[k++], "PYENROOT_SPANK_RESULT_FD=%d", RESULT_FD) < 0;
	if (failed) {
		env[--k] = NULL;  /* a failed asprintf leaves its slot undefined */
		for (size_t i = 0; i < k; i++)
			free(env[i]);
		free(env);
		return NULL;
	}
	return env;
}

static void free_environment(char **env)
{
	for (size_t i = 0; env && env[i]; i++)
		free(env[i]);
	free(env);
}

/* When slurmd runs the epilog with fds 0-2 closed, new fds land there; move each above RESULT_FD. */
static int high_fd(int fd)
{
	int high, saved;

	if (fd < 0 || fd > RESULT_FD)
		return fd;
	high = fcntl(fd, F_DUPFD_CLOEXEC, RESULT_FD + 1);
	saved = errno;
	close(fd);
	errno = saved;
	return high;
}

static void close_fds(const int *fds, int n)
{
	int saved = errno;

	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	errno = saved;
}

/* Fork + exec pyenroot as the job user; its output goes to *log_fd (a memfd), its results to *result_fd. */
int spawn(spank_t sp, struct argv_builder *args, struct child *child, int *log_fd, int *result_fd)
{
	int pipefd[2] = { -1, -1 }, fds[4] = { -1, -1, -1, -1 };  /* read, write, log, /dev/null */
	char **env = NULL;
	gid_t *seen = NULL;
	pid_t pid;

	if (args->failed || args->n == 0) {
		errno = ENOMEM;
		return -1;
	}
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return -1;
	fds[0] = high_fd(pipefd[0]);
	fds[1] = high_fd(pipefd[1]);
	fds[2] = high_fd(memfd_create("pyenroot-log", MFD_CLOEXEC));
	fds[3] = high_fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
	env = child_environment(sp);
	seen = calloc((size_t)st.ngids + 1, sizeof(gid_t));
	if (fds[0] < 0 || fds[1] < 0 || fds[2] < 0 || fds[3] < 0 || env == NULL || seen == NULL) {
		if (env == NULL || seen == NULL)
			errno = ENOMEM;
		goto fail;
	}
	pid = fork();
	if (pid == 0)
		exec_child(args, env, fds[3], fds[2], fds[1], seen);
	if (pid < 0)
		goto fail;
	child->pid = pid;
	/* Still our unreaped child here: the pidfd names this process, whatever later happens to the PID. */
	child->pidfd = high_fd((int)syscall(SYS_pidfd_open, pid, 0));
	close(fds[1]);
	close(fds[3]);
	free_environment(env);
	free(seen);
	*result_fd = fds[0];
	*log_fd = fds[2];
	return 0;
fail:
	close_fds(fds, 4);
	free_environment(env);
	free(seen);
	return -1;
}

/* Wait for the child to exit (and with WSTOPPED, to stop); a wait status, or -1 (also when someone else reaped
 * it). */
int wait_child(const struct child *c, int options)
{
	siginfo_t info;

	for (int by_pidfd = c->pidfd >= 0;;) {
		memset(&info, 0, sizeof(info));
		if (by_pidfd ? waitid(WAIT_PIDFD, (id_t)c->pidfd, &info, WEXITED | options) == 0
			     : waitid(P_PID, (id_t)c->pid, &info, WEXITED | options) == 0)
			break;
		if (by_pidfd && errno == EINVAL)
			by_pidfd = 0;  /* Linux 5.3: pidfd_open, but no waitid on it */
		else if (errno != EINTR)
			return -1;
	}
	switch (info.si_code) {
	case CLD_EXITED:
		return W_EXITCODE(info.si_status, 0);
	case CLD_KILLED:
	case CLD_DUMPED:
		return W_EXITCODE(0, info.si_status);
	case CLD_STOPPED:
		return W_STOPCODE(info.si_status);
	}
	return -1;
}

/* Without a pidfd, signal the PID only while it is still our child (not reaped, so not reused). */
static void signal_child(const struct child *c, int sig)
{
	siginfo_t info;

	if (c->pidfd >= 0) {
		(void)syscall(SYS_pidfd_send_signal, c->pidfd, sig, NULL, 0);
		return;
	}
	if (waitid(P_PID, (id_t)c->pid, &info, WEXITED | WSTOPPED | WCONTINUED | WNOHANG | WNOWAIT) == 0)
		kill(c->pid, sig);
}

void kill_child(struct child *c)
{
	signal_child(c, SIGKILL);
	signal_child(c, SIGCONT);
	wait_child(c, 0);  /* -1 if slurmstepd reaped it first: fine */
	if (c->pidfd >= 0)
		close(c->pidfd);
	c->pidfd = -1;
}

/* Show what a pyenroot child printed: as errors after a failure, or as is (the image entrypoint's output,
 * for --container-entrypoint-log). */
void show_log(int logfd, int as_errors)
{
	char line[4096];
	FILE *f;
	int fd = dup(logfd);

	if (fd < 0 || lseek(fd, 0, SEEK_SET) < 0 || (f = fdopen(fd, "r")) == NULL) {
		if (fd >= 0)
			close(fd);
		return;
	}
	if (as_errors)
		slurm_error(PFX "printing pyenroot log file:");
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (as_errors)
			slurm_error(PFX "    %s", line);
		else
			slurm_spank_log("%s", line);
	}
	fclose(f);
}

static void protocol_error(const char *what)
{
	slurm_error(PFX "pyenroot sent %s", what);
	st.failed = 1;
}

/* One result line (see pyenroot/slurm/step.py): written by a process the user could trace, so checked. */
static void handle_line(char *line)
{
	char *text = strchr(line, ' ');

	if (text)
		*text++ = '\0';
	else
		text = "";
	if (!strcmp(line, "log")) {
		slurm_spank_log(PFX "%s", text);
	} else if (!strcmp(line, "info")) {
		slurm_info(PFX "%s", text);
	} else if (!strcmp(line, "error")) {
		slurm_error(PFX "%s", text);
		st.failed = 1;
	} else if (!strcmp(line, "cleanup")) {
		st.needs_cleanup = 1;
	} else if (!strcmp(line, "join")) {
		if (parse_pid(text, &st.join) < 0)
			protocol_error("an invalid process to join");
	} else if (!strcmp(line, "seccomp")) {
		free(st.bpf);
		if (parse_hex(text, &st.bpf, &st.bpf_len) < 0 || st.bpf_len == 0 ||
		    st.bpf_len % sizeof(struct sock_filter) != 0 || st.bpf_len / sizeof(struct sock_filter) > BPF_MAXINSNS) {
			free(st.bpf);
			st.bpf = NULL;
			st.bpf_len = 0;
			protocol_error("an invalid seccomp program");
		}
	}
}

/* Result lines as they come, until the child closes fd 3; at most MAX_RESULTS bytes in all. */
void read_results(int fd)
{
	size_t cap = 4096, len = 0, total = 0;
	char *buf = malloc(cap + 1), *start, *nl;
	int overflow = buf == NULL;
	ssize_t n;

	while (!overflow) {
		if (len == cap) {
			char *bigger = cap < MAX_RESULTS ? realloc(buf, cap * 2 + 1) : NULL;
			if ((overflow = bigger == NULL))
				break;
			buf = bigger;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		if ((overflow = (total += (size_t)n) > MAX_RESULTS))
			break;
		for (start = buf; (nl = memchr(start, '\n', (size_t)(buf + len - start))) != NULL; start = nl + 1) {
			*nl = '\0';
			handle_line(start);
		}
		len = (size_t)(buf + len - start);
		memmove(buf, start, len);
	}
	if (buf == NULL) {
		slurm_error(PFX "couldn't read pyenroot's results: out of memory");
		st.failed = 1;
	} else if (overflow) {
		protocol_error("too much output");  /* closing the pipe below ends the child's writes */
	} else if (len > 0) {
		buf[len] = '\0';  /* a last line without a newline */
		handle_line(buf);
	}
	free(buf);
	close(fd);
}

/* Run a pyenroot command to completion; its errors are shown to the user. */
int run_to_end(spank_t sp, struct argv_builder *args)
{
	struct child child;
	int logfd, resfd, status;

	if (spawn(sp, args, &child, &logfd, &resfd) < 0) {
		slurm_error(PFX "couldn't run pyenroot: %s", strerror(errno));
		return -1;
	}
	read_results(resfd);
	status = wait_child(&child, 0);
	if (child.pidfd >= 0)
		close(child.pidfd);
	if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		slurm_error(PFX "%s failed with %s %d", args->items[2], WIFSIGNALED(status) ? "signal" : "error code",
			    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
		show_log(logfd, 1);
		close(logfd);
		return -1;
	}
	close(logfd);
	return 0;
}

/* Delete files as the job user (a short fork instead of a Python start). */
void unlink_as_user(const char *const *paths, int n)
{
	gid_t *seen = calloc((size_t)st.ngids + 1, sizeof(gid_t));
	struct child child = { .pidfd = -1 };
	int status;

	if (seen == NULL || (child.pid = fork()) < 0) {
		slurm_error(PFX "couldn't remove the step's files: %s", strerror(errno));
		free(seen);
		return;
	}
	if (child.pid == 0) {
		if (become_user(seen, -1) < 0)  /* fd 2 is slurmstepd's here: no message */
			_exit(CHILD_SETUP_FAILED);
		for (int i = 0; i < n; i++)
			unlink(paths[i]);
		_exit(0);
	}
	free(seen);
	status = wait_child(&child, 0);
	if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == CHILD_SETUP_FAILED)
		slurm_error(PFX "couldn't switch to the job user to remove the step's files");
}

/*
 * The step's commands: `pyenroot spank start` once per step and node (it ends as the container's stopped anchor
 * process), `spank cleanup` when the step's last local task ends, `spank epilog` when a job ends. spawn.c runs
 * them as the job user.
 */

#ifndef SLURM_BATCH_SCRIPT
#define SLURM_BATCH_SCRIPT 0xfffffffb  /* slurm.h: the step id of a batch script */
#endif

/* `pyenroot spank ACTION --job J [--step S] --runtime-path P`: how every command the plugin runs begins. */
static void command(struct argv_builder *a, const char *action, int with_step)
{
	argv_push(a, cfg.pyenroot[0] ? cfg.pyenroot : "pyenroot");
	argv_push(a, "spank");
	argv_push(a, action);
	argv_push_num(a, "--job", st.jobid);
	if (with_step)
		argv_push_num(a, "--step", st.stepid);
	argv_push_opt(a, "--runtime-path", cfg.runtime_path);
}

static void start_arguments(spank_t sp, struct argv_builder *a)
{
	char buf[4096], *argv0_script = NULL;
	int argc = 0;
	char **job_argv = NULL;
	uint32_t total = 0;

	command(a, "start", 1);
	if (spank_getenv(sp, "SLURMD_NODENAME", buf, sizeof(buf)) == ESPANK_SUCCESS || gethostname(buf, sizeof(buf)) == 0)
		argv_push_opt(a, "--node", buf);
	if (spank_get_item(sp, S_JOB_TOTAL_TASK_COUNT, &total) != ESPANK_SUCCESS)
		total = 0;
	argv_push_num(a, "--total-tasks", total);
	argv_push_num(a, "--local-tasks", st.local_tasks);
	argv_push_opt(a, "--scope", cfg.container_scope);
	argv_push_bool(a, "--squashfuse", cfg.use_squashfuse);
	if (cfg.importer[0])
		argv_push_opt(a, "--importer", cfg.importer);
	/* Relative paths resolve against the job's working directory (srun does not always export PWD). */
	if (spank_getenv(sp, "PWD", buf, sizeof(buf)) == ESPANK_SUCCESS ||
	    spank_getenv(sp, "SLURM_SUBMIT_DIR", buf, sizeof(buf)) == ESPANK_SUCCESS)
		argv_push_opt(a, "--cwd", buf);
	if (st.stepid == SLURM_BATCH_SCRIPT && spank_get_item(sp, S_JOB_ARGV, &argc, &job_argv) == ESPANK_SUCCESS &&
	    argc > 0)
		argv0_script = job_argv[0];
	argv_push_opt(a, "--batch-script", argv0_script);
	argv_push_opt(a, "--image", opt.image);
	argv_push_opt(a, "--name", opt.name);
	argv_push_opt(a, "--mounts", opt.mounts);
	argv_push_opt(a, "--workdir", opt.workdir);
	argv_push_opt(a, "--save", opt.save);
	argv_push_opt(a, "--env-names", opt.env_names);
	argv_push_opt(a, "--unshare", opt.unshare);
	if (opt.mount_home != -1)
		argv_push_bool(a, "--mount-home", opt.mount_home);
	if (opt.remap_root != -1 || cfg.remap_root != -1)
		argv_push_bool(a, "--remap-root", opt.remap_root != -1 ? opt.remap_root : cfg.remap_root);
	argv_push_bool(a, "--entrypoint", opt.entrypoint != -1 ? opt.entrypoint : cfg.execute_entrypoint);
	if (opt.entrypoint_log == 1)
		argv_push(a, "--entrypoint-log");
	if (opt.writable != -1)
		argv_push_bool(a, "--writable", opt.writable);
}

static int capture_anchor(void)
{
	char path[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/environ", (int)st.anchor);
	if (env_block_read(path, &st.environ_block) < 0) {
		slurm_error(PFX "couldn't read the container's environment: %s", strerror(errno));
		return -1;
	}
	snprintf(path, sizeof(path), "/proc/%d/cwd", (int)st.anchor);
	n = readlink(path, st.cwd, sizeof(st.cwd) - 1);
	if (n <= 0 || (size_t)n >= sizeof(st.cwd) - 1)
		n = 0;
	st.cwd[n] = '\0';
	if (n == 0)
		strcpy(st.cwd, "/");
	return 0;
}

static long elapsed_ms(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (long)((t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000);
}

/* Once per step and node: `pyenroot spank start`, which ends as the container's stopped anchor process. */
void start_container(spank_t sp)
{
	struct argv_builder args = { 0 };
	struct child child;
	struct timespec t0;
	int logfd, resfd, status, rv;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	start_arguments(sp, &args);
	rv = spawn(sp, &args, &child, &logfd, &resfd);
	argv_free(&args);
	if (rv < 0) {
		slurm_error(PFX "couldn't run pyenroot: %s", strerror(errno));
		st.failed = 1;
		return;
	}
	read_results(resfd);  /* until the child closes fd 3: results are complete, the container is starting */
	status = wait_child(&child, WSTOPPED);
	if (status != -1 && WIFSTOPPED(status) && !st.failed) {
		st.anchor = child.pid;
		st.anchor_pidfd = child.pidfd;
		if (capture_anchor() == 0) {
			if (opt.entrypoint_log == 1)
				show_log(logfd, 0);
			close(logfd);
			slurm_info(PFX "completed container setup in %ld ms", elapsed_ms(&t0));
			return;
		}
		st.anchor = 0;
		st.anchor_pidfd = -1;
		kill_child(&child);
	} else if (status != -1 && WIFSTOPPED(status)) {
		kill_child(&child);
	} else {
		if (!st.failed) {
			if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
				slurm_error(PFX "container exited too soon");
			else
				slurm_error(PFX "container start failed with error code: %d",
					    WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
			show_log(logfd, 1);
		}
		if (child.pidfd >= 0)
			close(child.pidfd);
	}
	st.failed = 1;
	close(logfd);
}

/* The per-step files `pyenroot spank start` leaves in the node-local runtime directory (config script, state):
 * without "cleanup 1" the plugin deletes them itself instead of a second Python start at the end of every step. */
static void remove_step_files(void)
{
	static const char *const suffixes[] = { "conf", "json" };
	char paths[2][700];
	const char *const list[] = { paths[0], paths[1] };

	for (int i = 0; i < 2; i++)
		snprintf(paths[i], sizeof(paths[i]), "%s/%u/step-%u.%u.%s", cfg.runtime_path, (unsigned)st.uid,
			 (unsigned)st.jobid, (unsigned)st.stepid, suffixes[i]);
	unlink_as_user(list, 2);
}

/* When the step's last local task ends (or the step ends): stop the anchor, then clean up as the user. */
void finalize(spank_t sp)
{
	struct argv_builder args = { 0 };

	if (!st.enabled || st.finalized)
		return;
	st.finalized = 1;
	if (st.anchor > 0) {
		struct child anchor = { st.anchor, st.anchor_pidfd };
		kill_child(&anchor);
		st.anchor = 0;
		st.anchor_pidfd = -1;
	}
	if (!st.needs_cleanup) {
		remove_step_files();
		return;
	}
	command(&args, "cleanup", 1);
	if (st.exited_tasks < st.local_tasks)
		argv_push(&args, "--incomplete");  /* do not export a half-run container */
	run_to_end(sp, &args);
	argv_free(&args);
}

/* Job-scoped named containers end with the job: `pyenroot spank epilog`. */
void run_epilog(void)
{
	struct argv_builder args = { 0 };

	/* slurmd may run the epilog without PATH, and execvpe searches the caller's (spawn.c). */
	if (!cfg.pyenroot[0] && getenv("PATH") == NULL && setenv("PATH", "/usr/local/bin:/usr/bin:/bin", 1) < 0)
		return;
	command(&args, "epilog", 0);
	(void)run_to_end(NULL, &args);  /* a failed cleanup must not drain the node */
	argv_free(&args);
}

/*
 * Each task, just before it execs (task_init, already the job user): the anchor's environment, its namespaces,
 * the working directory and the seccomp program; after this the task is in the container.
 */

static void sink_set(void *ctx, const char *name, const char *value, int overwrite)
{
	spank_setenv((spank_t)ctx, name, value, overwrite);  /* ESPANK_ENV_EXISTS without overwrite: wanted */
}

static void sink_unset(void *ctx, const char *name)
{
	spank_unsetenv((spank_t)ctx, name);
}

static int merge_environment(spank_t sp)
{
	const struct env_sink sink = { sink_set, sink_unset, sp };

	if (env_block_merge(&st.environ_block, opt.env_names, &sink) < 0) {
		slurm_error(PFX "couldn't set the container's environment: out of memory");
		return -1;
	}
	return 0;
}

/* 1: the same namespace as ours, 0: another one, -1: unknown (absent, or /proc not readable). */
static int same_namespace(pid_t pid, const char *ns)
{
	char path[64];
	struct stat a, b;

	snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)pid, ns);
	if (stat(path, &a) < 0)
		return -1;
	snprintf(path, sizeof(path), "/proc/self/ns/%s", ns);
	if (stat(path, &b) < 0)
		return -1;
	return a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

static const struct { const char *name; int type; } ns_order[] = {
	{ "user", CLONE_NEWUSER }, { "cgroup", CLONE_NEWCGROUP }, { "mnt", CLONE_NEWNS },
	{ "ipc", CLONE_NEWIPC }, { "uts", CLONE_NEWUTS }, { "net", CLONE_NEWNET },
};
#define NS_COUNT (sizeof(ns_order) / sizeof(ns_order[0]))

static int join_namespaces(pid_t pid)
{
	int fds[NS_COUNT], rv = -1;
	char path[64];
	size_t i;

	for (i = 0; i < NS_COUNT; i++)
		fds[i] = -1;
	/* Open everything first: after joining the user namespace /proc/PID may look different. */
	for (i = 0; i < NS_COUNT; i++) {
		if (same_namespace(pid, ns_order[i].name) != 0)
			continue;  /* shared with the host, or absent (e.g. no cgroup namespace) */
		snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)pid, ns_order[i].name);
		if ((fds[i] = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
			slurm_error(PFX "couldn't open %s: %s", path, strerror(errno));
			goto out;
		}
	}
	for (i = 0; i < NS_COUNT; i++) {
		if (fds[i] >= 0 && setns(fds[i], ns_order[i].type) < 0) {
			slurm_error(PFX "couldn't join the container's %s namespace: %s", ns_order[i].name,
				    strerror(errno));
			goto out;
		}
	}
	rv = 0;
out:
	for (i = 0; i < NS_COUNT; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return rv;
}

static int check_unshared(pid_t pid)
{
	static const struct { const char *ns, *what; } kinds[] = {
		{ "net", "network" }, { "ipc", "IPC" }, { "uts", "UTS" },
	};

	for (int i = 0; i < 3; i++) {
		if (in_list(opt.unshare, kinds[i].ns, strlen(kinds[i].ns)) && same_namespace(pid, kinds[i].ns) == 1) {
			slurm_error(PFX "error: --container-unshare=%s requested but the container is not in a separate %s "
				    "namespace", kinds[i].ns, kinds[i].what);
			return -1;
		}
	}
	return 0;
}

/* The program's size was checked when it arrived (spawn.c). */
static int install_seccomp(void)
{
	struct sock_fprog prog = { .len = (unsigned short)(st.bpf_len / sizeof(struct sock_filter)),
				   .filter = (struct sock_filter *)st.bpf };

	if (st.bpf_len == 0)
		return 0;
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW, &prog) == 0)
		return 0;
	if (errno == EINVAL && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0)
		return 0;
	if (errno == EACCES && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
	    syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0)
		return 0;
	slurm_error(PFX "couldn't install the seccomp filter: %s", strerror(errno));
	return -1;
}

int enter_container(spank_t sp)
{
	pid_t target = st.join > 0 ? st.join : st.anchor;
	const char *dir;

	if (merge_environment(sp) || check_unshared(target) || join_namespaces(target))
		return -1;
	dir = opt.workdir ? opt.workdir : st.cwd;
	if (chdir(dir) < 0) {
		slurm_error(PFX "couldn't chdir to %s: %s", dir, strerror(errno));
		return -1;
	}
	return install_seccomp();
}

SPANK_PLUGIN(pyenroot, 1);

struct step st = { .anchor_pidfd = -1 };

static int register_options(spank_t sp)
{
	for (struct spank_option *o = option_table; o->name; o++)
		if (spank_option_register(sp, o) != ESPANK_SUCCESS) {
			slurm_error(PFX "couldn't register option --%s", o->name);
			return -1;
		}
	return 0;
}

static int make_dir(const char *path, mode_t mode, uid_t uid, gid_t gid)
{
	mode_t old = umask(0);
	int rv = mkdir(path, mode);

	umask(old);
	if (rv < 0 && errno != EEXIST) {
		slurm_error(PFX "couldn't create %s: %s", path, strerror(errno));
		return -1;
	}
	if (rv == 0 && uid != (uid_t)-1 && chown(path, uid, gid) < 0) {
		slurm_error(PFX "couldn't chown %s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

static const char *local_getenv(spank_t sp, const char *name, char *buf, size_t len)
{
	return getenv(name);
}

static const char *remote_getenv(spank_t sp, const char *name, char *buf, size_t len)
{
	return spank_getenv(sp, name, buf, (int)len) == ESPANK_SUCCESS ? buf : NULL;
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	spank_context_t ctx = spank_context();

	/* Also in srun: a bad configuration then fails there, visibly, instead of every task launch. */
	if (parse_config(ac, av))
		return -1;
	switch (ctx) {
	case S_CTX_SLURMD:
		return make_dir(cfg.runtime_path, 0755, -1, -1);
	case S_CTX_ALLOCATOR:
		return cfg.sbatch_support ? register_options(sp) : 0;
	case S_CTX_LOCAL:
	case S_CTX_REMOTE:
		return register_options(sp);
	default:
		return 0;
	}
}

/* The groups the child gets (spawn.c); just the primary group when Slurm has no list. */
static int set_groups(const gid_t *gids, int n)
{
	free(st.gids);
	st.ngids = n > 0 ? n : 1;
	if ((st.gids = calloc((size_t)st.ngids, sizeof(gid_t))) == NULL) {
		slurm_error(PFX "couldn't keep the job's groups: out of memory");
		st.ngids = 0;
		return -1;
	}
	if (n > 0)
		memcpy(st.gids, gids, (size_t)n * sizeof(gid_t));
	else
		st.gids[0] = st.gid;
	return 0;
}

static int save_groups(spank_t sp)
{
	gid_t *gids = NULL;
	int n = 0;

	if (spank_get_item(sp, S_JOB_SUPPLEMENTARY_GIDS, &gids, &n) != ESPANK_SUCCESS || n < 0 || gids == NULL)
		n = 0;
	return set_groups(gids, n);
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
	spank_context_t ctx = spank_context();
	char dir[600];

	if (ctx == S_CTX_LOCAL || ctx == S_CTX_ALLOCATOR) {
		if (env_fallbacks(sp, local_getenv))
			return -1;
		if (!enabled())
			warn_ignored();
		return 0;
	}
	if (ctx != S_CTX_REMOTE)
		return 0;
	if (env_fallbacks(sp, remote_getenv))
		return -1;
	st.enabled = enabled();
	if (!st.enabled)
		return 0;
	if (spank_get_item(sp, S_JOB_UID, &st.uid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_GID, &st.gid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_ID, &st.jobid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_STEPID, &st.stepid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_LOCAL_TASK_COUNT, &st.local_tasks) != ESPANK_SUCCESS) {
		slurm_error(PFX "couldn't get the job's identity");
		return -1;
	}
	if (save_groups(sp) || make_dir(cfg.runtime_path, 0755, -1, -1))
		return -1;
	snprintf(dir, sizeof(dir), "%s/%u", cfg.runtime_path, (unsigned)st.uid);
	return make_dir(dir, 0700, st.uid, st.gid);
}

/* Once per step and node, before the tasks fork. Errors are kept for task_init: failing here would make
 * srun exit 0. */
int slurm_spank_user_init(spank_t sp, int ac, char **av)
{
	if (spank_context() != S_CTX_REMOTE || !st.enabled)
		return 0;
	start_container(sp);
	return 0;
}

int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
	if (spank_context() != S_CTX_REMOTE || !st.enabled)
		return 0;
	if (st.failed || st.anchor <= 0)
		return -1;
	return enter_container(sp) ? -1 : 0;
}

int slurm_spank_task_exit(spank_t sp, int ac, char **av)
{
	if (spank_context() != S_CTX_REMOTE || !st.enabled)
		return 0;
	if (++st.exited_tasks >= st.local_tasks)
		finalize(sp);
	return 0;
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
	if (spank_context() == S_CTX_REMOTE)
		finalize(sp);
	env_block_free(&st.environ_block);
	free(st.bpf);
	free(st.gids);
	st.bpf = NULL;
	st.gids = NULL;
	return 0;
}

static int env_number(const char *name, unsigned long *out)
{
	const char *value = getenv(name);
	char *end;

	if (value == NULL || *value == '\0')
		return 0;
	errno = 0;
	*out = strtoul(value, &end, 10);
	return *end == '\0' && errno == 0;
}

static int job_from_environment(void)
{
	unsigned long uid, gid, job;

	if (!env_number("SLURM_JOB_UID", &uid) || !env_number("SLURM_JOB_ID", &job))
		return 0;
	if (!env_number("SLURM_JOB_GID", &gid)) {
		struct passwd *pw = getpwuid((uid_t)uid);
		if (pw == NULL)
			return 0;
		gid = pw->pw_gid;
	}
	st.uid = (uid_t)uid;
	st.gid = (gid_t)gid;
	st.jobid = (uint32_t)job;
	return 1;
}

/* Job-scoped named containers live until the job ends, on every node the job used. */
int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
	/* Slurm does not always call init before the epilog in this context: the arguments come with it too. */
	if (parse_config(ac, av))
		return 0;
	if (strcmp(cfg.container_scope, "job") != 0)
		return 0;
	/* The job script context has no job items: slurmd passes the job's identity in the environment. */
	if (!job_from_environment() || set_groups(NULL, 0))
		return 0;
	run_epilog();
	return 0;
}
