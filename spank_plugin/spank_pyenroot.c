/*
 * spank_pyenroot: srun/sbatch --container-* options (pyxis compatible) backed by the pyenroot CLI.
 *
 * The plugin only validates options, execs `pyenroot spank start` as the job user once per step and node
 * (which imports/creates/starts the container and leaves a stopped anchor process), and makes every task
 * join the anchor's namespaces before exec. Every decision about images, names, mounts and environment is
 * made by the Python side; see pyenroot/slurm/step.py for the other half of the protocol.
 *
 * Protocol: the child gets a pipe on fd 3 and writes lines "log TEXT" (shown to the user), "info TEXT"
 * (slurmd log), "error TEXT" (shown, step fails), "join PID" (namespaces to join instead of the anchor's),
 * "seccomp HEX" (a classic BPF program installed in each task), "cleanup 1" (run `pyenroot spank cleanup` at
 * step end; otherwise the plugin only deletes the step's two files itself). It then becomes the container's anchor,
 * a shell that stops itself; its environment and cwd are the tasks' environment and default cwd.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <slurm/spank.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
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

SPANK_PLUGIN(pyenroot, 1);

#define PFX "pyenroot: "
#ifndef SLURM_BATCH_SCRIPT
#define SLURM_BATCH_SCRIPT 0xfffffffb  /* slurm.h: the step id of a batch script */
#endif
#define RESULT_FD 3

/* ------------------------------------------------------------------------------------------ state */

struct options {
	char *image, *workdir, *name, *save, *env_names, *unshare;
	char *mounts;           /* comma-joined, accumulated over repeated options */
	int mount_home, remap_root, entrypoint, entrypoint_log, writable;  /* -1: unset */
};

struct config {
	char runtime_path[512];
	char pyenroot[512];     /* empty: "pyenroot" on PATH */
	char importer[512];
	char container_scope[16];
	int remap_root, execute_entrypoint, sbatch_support, use_squashfuse;
};

struct step {
	int enabled, failed, finalized, needs_cleanup;
	uid_t uid;
	gid_t gid;
	uint32_t jobid, stepid, local_tasks, exited_tasks;
	pid_t anchor, join;
	char *environ_block;    /* NUL-separated KEY=VALUE of the anchor */
	size_t environ_len;
	char cwd[4096];
	unsigned char *bpf;
	size_t bpf_len;
	gid_t gids[256];
	int ngids;
};

static struct options opt = { .mount_home = -1, .remap_root = -1, .entrypoint = -1, .entrypoint_log = -1,
			      .writable = -1 };
static struct config cfg = { .runtime_path = "/run/pyenroot", .container_scope = "global", .remap_root = -1,
			     .execute_entrypoint = 0, .sbatch_support = 1, .use_squashfuse = 1 };
static struct step st;

/* ------------------------------------------------------------------------------------------ options */

static int set_string(char **slot, const char *flag, const char *value)
{
	if (value == NULL || *value == '\0') {
		slurm_error(PFX "--%s: argument required", flag);
		return -1;
	}
	if (*slot != NULL) {
		/* Slurm may call an option callback twice with the same value. */
		if (strcmp(*slot, value) == 0)
			return 0;
		slurm_error(PFX "--%s specified multiple times", flag);
		return -1;
	}
	*slot = strdup(value);
	return *slot ? 0 : -1;
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

static int has_empty_element(const char *list)
{
	size_t n = strlen(list);
	return n == 0 || list[0] == ',' || list[n - 1] == ',' || strstr(list, ",,") != NULL;
}

static int check_mount(char *entry)
{
	char original[4096];
	char *src = entry, *dst, *colon = strchr(entry, ':');

	snprintf(original, sizeof(original), "%s", entry);
	if (colon == NULL) {
		dst = src;
	} else {
		*colon = '\0';
		dst = colon + 1;
		char *flags = strchr(dst, ':');
		if (flags)
			*flags = '\0';
	}
	if (*src == '\0' || *dst == '\0') {
		slurm_error(PFX "--container-mounts: invalid format: %s", original);
		return -1;
	}
	if (src[0] != '.' && src[0] != '/' && strcmp(src, "tmpfs") != 0 && strcmp(src, "umount") != 0) {
		slurm_error(PFX "--container-mounts: mount source must be a relative path, an absolute path, "
			    "\"tmpfs\" or \"umount\"");
		return -1;
	}
	if (dst[0] != '.' && dst[0] != '/') {
		slurm_error(PFX "--container-mounts: mount target must be a relative path or an absolute path");
		return -1;
	}
	return 0;
}

static int cb_mounts_value(const char *value)
{
	char *copy, *save = NULL, *entry;
	int rv = 0;

	if (value == NULL || *value == '\0') {
		slurm_error(PFX "--container-mounts: argument required");
		return -1;
	}
	if (has_empty_element(value)) {
		slurm_error(PFX "--container-mounts: invalid format: %s", value);
		return -1;
	}
	copy = strdup(value);
	for (entry = strtok_r(copy, ",", &save); entry && rv == 0; entry = strtok_r(NULL, ",", &save))
		rv = check_mount(entry);
	free(copy);
	if (rv)
		return rv;
	if (opt.mounts && strcmp(opt.mounts, value) == 0)
		return 0;  /* the same value delivered twice */
	if (opt.mounts) {
		char *joined;
		if (asprintf(&joined, "%s,%s", opt.mounts, value) < 0)
			return -1;
		free(opt.mounts);
		opt.mounts = joined;
	} else {
		opt.mounts = strdup(value);
	}
	return 0;
}

static int cb_image(int val, const char *arg, int remote) { return set_string(&opt.image, "container-image", arg); }
static int cb_mounts(int val, const char *arg, int remote) { return cb_mounts_value(arg); }
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

static int check_namespaces(const char *list)
{
	char *copy, *save = NULL, *ns;
	int rv = 0;

	if (has_empty_element(list)) {
		slurm_error(PFX "--container-unshare: empty namespace argument");
		return -1;
	}
	copy = strdup(list);
	for (ns = strtok_r(copy, ",", &save); ns && rv == 0; ns = strtok_r(NULL, ",", &save)) {
		if (strcmp(ns, "net") && strcmp(ns, "ipc") && strcmp(ns, "uts")) {
			slurm_error(PFX "--container-unshare: unknown namespace '%s'", ns);
			rv = -1;
		}
	}
	free(copy);
	return rv;
}

static int cb_unshare(int val, const char *arg, int remote)
{
	if (arg == NULL || *arg == '\0') {
		slurm_error(PFX "--container-unshare: empty namespace argument");
		return -1;
	}
	if (check_namespaces(arg))
		return -1;
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

static struct spank_option option_table[] = {
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

/* ------------------------------------------------------------------------------------------ config */

static int parse_bool(const char *s)
{
	if (!strcasecmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "y"))
		return 1;
	if (!strcasecmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "n"))
		return 0;
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

static int parse_config(int ac, char **av)
{
	for (int i = 0; i < ac; i++) {
		char *eq = strchr(av[i], '=');
		const char *value = eq ? eq + 1 : "";
		size_t klen = eq ? (size_t)(eq - av[i]) : strlen(av[i]);
		char key[64];
		int *flag = NULL, b;

		snprintf(key, sizeof(key), "%.*s", (int)klen, av[i]);
		if (!strcmp(key, "runtime_path")) {
			if (copy_value(cfg.runtime_path, sizeof(cfg.runtime_path), key, value))
				return -1;
		} else if (!strcmp(key, "pyenroot")) {
			if (copy_value(cfg.pyenroot, sizeof(cfg.pyenroot), key, value))
				return -1;
		} else if (!strcmp(key, "importer")) {
			if (copy_value(cfg.importer, sizeof(cfg.importer), key, value))
				return -1;
		} else if (!strcmp(key, "container_scope")) {
			if (strcmp(value, "job") && strcmp(value, "global")) {
				slurm_error(PFX "%s: invalid value: %s", key, value);
				return -1;
			}
			strcpy(cfg.container_scope, value);
		} else if (!strcmp(key, "remap_root")) {
			flag = &cfg.remap_root;
		} else if (!strcmp(key, "execute_entrypoint")) {
			flag = &cfg.execute_entrypoint;
		} else if (!strcmp(key, "sbatch_support")) {
			flag = &cfg.sbatch_support;
		} else if (!strcmp(key, "use_squashfuse")) {
			flag = &cfg.use_squashfuse;
		} else if (!strcmp(key, "use_enroot_load")) {
			continue;  /* accepted for pyxis configurations; pyenroot always imports through its cache */
		} else {
			slurm_error(PFX "unknown configuration option: %s", av[i]);
			return -1;
		}
		if (flag) {
			if ((b = parse_bool(value)) < 0) {
				slurm_error(PFX "%s: invalid value: %s", key, value);
				return -1;
			}
			*flag = b;
		}
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------ environment fallbacks */

typedef const char *(*env_getter)(spank_t sp, const char *name, char *buf, size_t len);

static const char *local_getenv(spank_t sp, const char *name, char *buf, size_t len)
{
	return getenv(name);
}

static const char *remote_getenv(spank_t sp, const char *name, char *buf, size_t len)
{
	return spank_getenv(sp, name, buf, len) == ESPANK_SUCCESS ? buf : NULL;
}

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

static void env_bool(spank_t sp, env_getter get, const char *suffix, int *slot, int invert)
{
	char buf[64];
	const char *value = container_env(sp, get, suffix, buf, sizeof(buf));
	int b;

	if (value && *slot == -1 && (b = parse_bool(value)) >= 0)
		*slot = invert ? !b : b;
}

static int env_fallbacks(spank_t sp, env_getter get)
{
	char buf[8192];
	const char *v;
	int rv = 0;

	if (!opt.image && (v = container_env(sp, get, "IMAGE", buf, sizeof(buf))))
		rv |= cb_image(0, v, 0);
	if (!opt.mounts && (v = container_env(sp, get, "MOUNTS", buf, sizeof(buf))))
		rv |= cb_mounts_value(v);
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

static int enabled(void)
{
	return opt.image != NULL || opt.name != NULL;
}

struct given_option {
	const char *flag;
	int set;
};

static void warn_ignored(void)
{
	const struct given_option *p, *end;
	const struct given_option given[] = {
		{ "--container-mounts", opt.mounts != NULL },
		{ "--container-workdir", opt.workdir != NULL },
		{ "--container-save", opt.save != NULL },
		{ "--[no-]container-mount-home", opt.mount_home != -1 },
		{ "--[no-]container-remap-root", opt.remap_root != -1 },
		{ "--[no-]container-entrypoint", opt.entrypoint != -1 },
		{ "--container-entrypoint-log", opt.entrypoint_log == 1 },
		{ "--container-writable/--container-readonly", opt.writable != -1 },
	};

	end = given + sizeof(given) / sizeof(given[0]);
	for (p = given; p < end; p++)
		if (p->set)
			slurm_error(PFX "ignoring %s because neither --container-image nor --container-name is set",
				    p->flag);
}

/* ------------------------------------------------------------------------------------------ running pyenroot */

struct argv_builder {
	char *items[96];
	int n;
};

static void push(struct argv_builder *a, const char *s)
{
	if (a->n < (int)(sizeof(a->items) / sizeof(a->items[0])) - 1)
		a->items[a->n++] = strdup(s);
	a->items[a->n] = NULL;
}

static void push_opt(struct argv_builder *a, const char *flag, const char *value)
{
	if (value) {
		push(a, flag);
		push(a, value);
	}
}

static void push_int(struct argv_builder *a, const char *flag, long value)
{
	char buf[32];
	snprintf(buf, sizeof(buf), "%ld", value);
	push_opt(a, flag, buf);
}

static void free_argv(struct argv_builder *a)
{
	for (int i = 0; i < a->n; i++)
		free(a->items[i]);
	a->n = 0;
}

/* Job variables that must not reach pyenroot: node settings come from the node, task identity from the task. */
static int denied(const char *entry)
{
	static const char *const names[] = {
		"PATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_TASK_PID",
		"PMIX_RANK", "PMI_FD", "ENROOT_LIBRARY_PATH", "ENROOT_SYSCONF_PATH", "ENROOT_RUNTIME_PATH",
		"ENROOT_TEMP_PATH", "ENROOT_ZSTD_OPTIONS", "ENROOT_TRANSFER_RETRIES", "ENROOT_CONNECT_TIMEOUT",
		"ENROOT_MAX_CONNECTIONS", "XDG_RUNTIME_DIR",
		/* pyenroot is a Python program installed by the site: the job's Python settings are not for it. */
		"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONINSPECT", NULL,
	};
	size_t len = strcspn(entry, "=");

	for (int i = 0; names[i]; i++)
		if (strlen(names[i]) == len && !strncmp(entry, names[i], len))
			return 1;
	return 0;
}

static char **child_environment(spank_t sp)
{
	char **job_env = NULL, **env;
	size_t n = 0, k = 0;
	const char *path = getenv("PATH");

	if (sp && spank_get_item(sp, S_JOB_ENV, &job_env) != ESPANK_SUCCESS)
		job_env = NULL;
	while (job_env && job_env[n])
		n++;
	env = calloc(n + 6, sizeof(char *));
	if (!env)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (!denied(job_env[i]))
			env[k++] = strdup(job_env[i]);
	asprintf(&env[k++], "PATH=%s", path && *path ? path : "/usr/local/bin:/usr/bin:/bin");
	asprintf(&env[k++], "SLURM_JOB_UID=%u", (unsigned)st.uid);
	asprintf(&env[k++], "SLURM_JOB_GID=%u", (unsigned)st.gid);
	/* Node-local runtime space: two nodes of one step share homes (NFS) but never this directory. */
	asprintf(&env[k++], "XDG_RUNTIME_DIR=%s/%u", cfg.runtime_path, (unsigned)st.uid);
	asprintf(&env[k++], "PYENROOT_SPANK_RESULT_FD=%d", RESULT_FD);
	env[k] = NULL;
	return env;
}

static void become_user(void)
{
	if (geteuid() != 0)
		(void)seteuid(0);  /* user_init runs with privileges only temporarily dropped */
	if (geteuid() == 0 && setgroups(st.ngids, st.gids) < 0)
		(void)setgroups(0, NULL);
	if (setregid(st.gid, st.gid) < 0 || setreuid(st.uid, st.uid) < 0)
		_exit(126);
	if (getuid() != st.uid || geteuid() != st.uid)
		_exit(126);
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

/* Fork + exec pyenroot as the job user; stdout/stderr go to *log_fd (a memfd), fd 3 to *result_fd. */
static pid_t spawn(spank_t sp, struct argv_builder *args, int *log_fd, int *result_fd)
{
	int pipefd[2], logfd;
	char **env = child_environment(sp);
	pid_t pid;

	if (env == NULL || pipe2(pipefd, O_CLOEXEC) < 0)
		return -1;
	logfd = memfd_create("pyenroot-log", MFD_CLOEXEC);
	if (logfd < 0) {
		close(pipefd[0]);
		close(pipefd[1]);
		return -1;
	}
	pid = fork();
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDONLY);
		dup2(devnull, STDIN_FILENO);
		dup2(logfd, STDOUT_FILENO);
		dup2(logfd, STDERR_FILENO);
		dup2(pipefd[1], RESULT_FD);
		if (syscall(SYS_close_range, RESULT_FD + 1, ~0U, 0) < 0)
			for (int fd = RESULT_FD + 1; fd < 4096; fd++)
				close(fd);
		/* slurmstepd exempts itself from the OOM killer; the container is an ordinary part of the job. */
		int oom = open("/proc/self/oom_score_adj", O_WRONLY);
		if (oom >= 0) {
			(void)!write(oom, "0", 1);
			close(oom);
		}
		reset_signals();
		become_user();
		if (cfg.pyenroot[0])
			execve(cfg.pyenroot, args->items, env);
		else
			execvpe("pyenroot", args->items, env);
		dprintf(STDERR_FILENO, "exec %s: %s\n", cfg.pyenroot[0] ? cfg.pyenroot : "pyenroot", strerror(errno));
		_exit(127);
	}
	close(pipefd[1]);
	for (int i = 0; env[i]; i++)
		free(env[i]);
	free(env);
	if (pid < 0) {
		close(pipefd[0]);
		close(logfd);
		return -1;
	}
	*log_fd = logfd;
	*result_fd = pipefd[0];
	return pid;
}

/* Show what a pyenroot child printed: as errors after a failure, or as is (the image entrypoint's output,
 * for --container-entrypoint-log). */
static void show_log(int logfd, int as_errors)
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

static int hexval(int c)
{
	return isdigit(c) ? c - '0' : tolower(c) - 'a' + 10;
}

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
		st.join = (pid_t)atoi(text);
	} else if (!strcmp(line, "seccomp")) {
		size_t n = strlen(text) / 2;
		free(st.bpf);
		st.bpf = malloc(n);
		for (size_t i = 0; st.bpf && i < n; i++)
			st.bpf[i] = (unsigned char)(hexval(text[2 * i]) << 4 | hexval(text[2 * i + 1]));
		st.bpf_len = st.bpf ? n : 0;
	}
}

static void read_results(int fd)
{
	FILE *f = fdopen(fd, "r");
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;

	if (!f) {
		close(fd);
		return;
	}
	while ((len = getline(&line, &cap, f)) > 0) {
		if (line[len - 1] == '\n')
			line[len - 1] = '\0';
		handle_line(line);
	}
	free(line);
	fclose(f);
}

static int wait_child(pid_t pid, int options)
{
	int status;

	while (waitpid(pid, &status, options) < 0)
		if (errno != EINTR)
			return -1;
	return status;
}

/* Run a pyenroot command to completion; its errors are shown to the user. */
static int run_to_end(spank_t sp, struct argv_builder *args)
{
	int logfd, resfd, status;
	pid_t pid = spawn(sp, args, &logfd, &resfd);

	if (pid < 0) {
		slurm_error(PFX "couldn't run pyenroot: %s", strerror(errno));
		return -1;
	}
	read_results(resfd);
	status = wait_child(pid, 0);
	if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		slurm_error(PFX "%s failed with %s %d", args->items[2] ? args->items[2] : "pyenroot",
			    WIFSIGNALED(status) ? "signal" : "error code",
			    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
		show_log(logfd, 1);
		close(logfd);
		return -1;
	}
	close(logfd);
	return 0;
}

/* ------------------------------------------------------------------------------------------ step start */

static char *read_file(const char *path, size_t *len_out)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t cap = 8192, len = 0;
	char *buf = malloc(cap);
	ssize_t n;

	if (fd < 0 || !buf) {
		if (fd >= 0)
			close(fd);
		free(buf);
		return NULL;
	}
	while ((n = read(fd, buf + len, cap - len)) > 0) {
		len += n;
		if (len == cap) {
			char *bigger = realloc(buf, cap *= 2);
			if (!bigger)
				break;
			buf = bigger;
		}
	}
	close(fd);
	*len_out = len;
	return buf;
}

static void start_arguments(spank_t sp, struct argv_builder *a)
{
	char buf[4096], *argv0_script = NULL;
	int argc = 0;
	char **job_argv = NULL;
	uint32_t total = 0;

	push(a, cfg.pyenroot[0] ? cfg.pyenroot : "pyenroot");
	push(a, "spank");
	push(a, "start");
	push_int(a, "--job", st.jobid);
	push_int(a, "--step", st.stepid);
	if (spank_getenv(sp, "SLURMD_NODENAME", buf, sizeof(buf)) == ESPANK_SUCCESS || gethostname(buf, sizeof(buf)) == 0)
		push_opt(a, "--node", buf);
	spank_get_item(sp, S_JOB_TOTAL_TASK_COUNT, &total);
	push_int(a, "--total-tasks", total);
	push_int(a, "--local-tasks", st.local_tasks);
	push_opt(a, "--scope", cfg.container_scope);
	push_opt(a, "--runtime-path", cfg.runtime_path);
	push_int(a, "--squashfuse", cfg.use_squashfuse);
	if (cfg.importer[0])
		push_opt(a, "--importer", cfg.importer);
	/* Relative paths resolve against the job's working directory (srun does not always export PWD). */
	if (spank_getenv(sp, "PWD", buf, sizeof(buf)) == ESPANK_SUCCESS ||
	    spank_getenv(sp, "SLURM_SUBMIT_DIR", buf, sizeof(buf)) == ESPANK_SUCCESS)
		push_opt(a, "--cwd", buf);
	if (st.stepid == SLURM_BATCH_SCRIPT && spank_get_item(sp, S_JOB_ARGV, &argc, &job_argv) == ESPANK_SUCCESS &&
	    argc > 0)
		argv0_script = job_argv[0];
	push_opt(a, "--batch-script", argv0_script);
	push_opt(a, "--image", opt.image);
	push_opt(a, "--name", opt.name);
	push_opt(a, "--mounts", opt.mounts);
	push_opt(a, "--workdir", opt.workdir);
	push_opt(a, "--save", opt.save);
	push_opt(a, "--env-names", opt.env_names);
	push_opt(a, "--unshare", opt.unshare);
	if (opt.mount_home != -1)
		push_int(a, "--mount-home", opt.mount_home);
	if (opt.remap_root != -1)
		push_int(a, "--remap-root", opt.remap_root);
	else if (cfg.remap_root != -1)
		push_int(a, "--remap-root", cfg.remap_root);
	push_int(a, "--entrypoint", opt.entrypoint != -1 ? opt.entrypoint : cfg.execute_entrypoint);
	if (opt.entrypoint_log == 1)
		push(a, "--entrypoint-log");
	if (opt.writable != -1)
		push_int(a, "--writable", opt.writable);
}

static void capture_anchor(void)
{
	char path[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/environ", (int)st.anchor);
	st.environ_block = read_file(path, &st.environ_len);
	snprintf(path, sizeof(path), "/proc/%d/cwd", (int)st.anchor);
	n = readlink(path, st.cwd, sizeof(st.cwd) - 1);
	st.cwd[n > 0 ? n : 0] = '\0';
	if (n <= 0)
		strcpy(st.cwd, "/");
}

static void start_container(spank_t sp)
{
	struct argv_builder args = { .n = 0 };
	int logfd, resfd, status;
	pid_t pid;

	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	start_arguments(sp, &args);
	pid = spawn(sp, &args, &logfd, &resfd);
	free_argv(&args);
	if (pid < 0) {
		slurm_error(PFX "couldn't run pyenroot: %s", strerror(errno));
		st.failed = 1;
		return;
	}
	read_results(resfd);  /* until the child closes fd 3: results are complete, the container is starting */
	status = wait_child(pid, WUNTRACED);
	if (status != -1 && WIFSTOPPED(status) && !st.failed) {
		st.anchor = pid;
		capture_anchor();
		if (opt.entrypoint_log == 1)
			show_log(logfd, 0);
		close(logfd);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		slurm_info(PFX "completed container setup in %ld ms",
			   (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000));
		return;
	}
	if (status != -1 && WIFSTOPPED(status)) {
		kill(pid, SIGKILL);
		kill(pid, SIGCONT);
		wait_child(pid, 0);
	} else if (!st.failed) {
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
			slurm_error(PFX "container exited too soon");
		else
			slurm_error(PFX "container start failed with error code: %d",
				    WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
		show_log(logfd, 1);
	}
	st.failed = 1;
	close(logfd);
}

/* ------------------------------------------------------------------------------------------ task side */

static const char *env_lookup(const char *name)
{
	size_t len = strlen(name);

	for (size_t off = 0; off < st.environ_len; off += strlen(st.environ_block + off) + 1) {
		const char *entry = st.environ_block + off;
		if (!strncmp(entry, name, len) && entry[len] == '=')
			return entry + len + 1;
	}
	return NULL;
}

static int in_list(const char *list, const char *name, size_t len)
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

static void merge_environment(spank_t sp)
{
	static const char *const locale[] = { "LANG", "LANGUAGE", "LC_ALL", NULL };

	for (int i = 0; locale[i]; i++)
		if (!in_list(opt.env_names, locale[i], strlen(locale[i])) && !env_lookup(locale[i]))
			spank_unsetenv(sp, locale[i]);
	for (size_t off = 0; off < st.environ_len; off += strlen(st.environ_block + off) + 1) {
		char *entry = st.environ_block + off, *eq = strchr(entry, '=');
		if (!eq || eq == entry)
			continue;
		*eq = '\0';
		/* The container wins, except for the names the user asked to keep from the host. */
		spank_setenv(sp, entry, eq + 1, !in_list(opt.env_names, entry, (size_t)(eq - entry)));
		*eq = '=';
	}
}

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

static int join_namespaces(pid_t pid)
{
	static const struct { const char *name; int type; } order[] = {
		{ "user", CLONE_NEWUSER }, { "cgroup", CLONE_NEWCGROUP }, { "mnt", CLONE_NEWNS },
		{ "ipc", CLONE_NEWIPC }, { "uts", CLONE_NEWUTS }, { "net", CLONE_NEWNET },
	};
	int fds[6];
	char path[64];

	/* Open everything first: after joining the user namespace /proc/PID may look different. */
	for (int i = 0; i < 6; i++) {
		fds[i] = -1;
		if (same_namespace(pid, order[i].name) != 0)
			continue;  /* shared with the host, or absent (e.g. no cgroup namespace) */
		snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)pid, order[i].name);
		fds[i] = open(path, O_RDONLY | O_CLOEXEC);
		if (fds[i] < 0) {
			slurm_error(PFX "couldn't open %s: %s", path, strerror(errno));
			return -1;
		}
	}
	for (int i = 0; i < 6; i++) {
		if (fds[i] < 0)
			continue;
		if (setns(fds[i], order[i].type) < 0) {
			slurm_error(PFX "couldn't join the container's %s namespace: %s", order[i].name, strerror(errno));
			return -1;
		}
		close(fds[i]);
	}
	return 0;
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

static int enter_container(spank_t sp)
{
	pid_t target = st.join > 0 ? st.join : st.anchor;
	const char *dir;

	merge_environment(sp);
	if (check_unshared(target) || join_namespaces(target))
		return -1;
	dir = opt.workdir ? opt.workdir : st.cwd;
	if (chdir(dir) < 0) {
		slurm_error(PFX "couldn't chdir to %s: %s", dir, strerror(errno));
		return -1;
	}
	return install_seccomp();
}

/* ------------------------------------------------------------------------------------------ step end */

/* The per-step files `pyenroot spank start` leaves in the node-local runtime directory, deleted as the user
 * (a short fork instead of a second Python start at the end of every step). */
static void remove_step_files(void)
{
	static const char *const suffixes[] = { "conf", "json" };
	pid_t pid = fork();

	if (pid == 0) {
		char path[700];
		become_user();
		for (int i = 0; i < 2; i++) {
			snprintf(path, sizeof(path), "%s/%u/step-%u.%u.%s", cfg.runtime_path, (unsigned)st.uid,
				 (unsigned)st.jobid, (unsigned)st.stepid, suffixes[i]);
			unlink(path);
		}
		_exit(0);
	}
	if (pid > 0)
		wait_child(pid, 0);
}

static void finalize(spank_t sp)
{
	struct argv_builder args = { .n = 0 };

	if (!st.enabled || st.finalized)
		return;
	st.finalized = 1;
	if (st.anchor > 0) {
		kill(st.anchor, SIGKILL);
		kill(st.anchor, SIGCONT);
		wait_child(st.anchor, 0);  /* ECHILD if slurmstepd reaped it first: fine */
		st.anchor = 0;
	}
	if (!st.needs_cleanup) {
		remove_step_files();
		return;
	}
	push(&args, cfg.pyenroot[0] ? cfg.pyenroot : "pyenroot");
	push(&args, "spank");
	push(&args, "cleanup");
	push_int(&args, "--job", st.jobid);
	push_int(&args, "--step", st.stepid);
	push_opt(&args, "--runtime-path", cfg.runtime_path);
	if (st.exited_tasks < st.local_tasks)
		push(&args, "--incomplete");  /* do not export a half-run container */
	run_to_end(sp, &args);
	free_argv(&args);
}

/* ------------------------------------------------------------------------------------------ SPANK entry points */

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

static void save_groups(spank_t sp)
{
	gid_t *gids = NULL;
	int n = 0;

	if (spank_get_item(sp, S_JOB_SUPPLEMENTARY_GIDS, &gids, &n) != ESPANK_SUCCESS || n < 0)
		n = 0;
	st.ngids = n < 256 ? n : 256;
	for (int i = 0; i < st.ngids; i++)
		st.gids[i] = gids[i];
	if (st.ngids == 0) {
		st.gids[0] = st.gid;
		st.ngids = 1;
	}
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
	save_groups(sp);
	if (make_dir(cfg.runtime_path, 0755, -1, -1))
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
	free(st.environ_block);
	free(st.bpf);
	return 0;
}

static int env_number(const char *name, unsigned long *out)
{
	const char *value = getenv(name);
	char *end;

	if (value == NULL || *value == '\0')
		return 0;
	*out = strtoul(value, &end, 10);
	return *end == '\0';
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
	struct argv_builder args = { .n = 0 };
	int rv;

	/* Slurm does not always call init before the epilog in this context: the arguments come with it too. */
	if (parse_config(ac, av))
		return 0;
	if (strcmp(cfg.container_scope, "job") != 0)
		return 0;
	/* The job script context has no job items: slurmd passes the job's identity in the environment. */
	if (!job_from_environment())
		return 0;
	st.gids[0] = st.gid;
	st.ngids = 1;
	push(&args, cfg.pyenroot[0] ? cfg.pyenroot : "pyenroot");
	push(&args, "spank");
	push(&args, "epilog");
	push_int(&args, "--job", st.jobid);
	push_opt(&args, "--runtime-path", cfg.runtime_path);
	if (getenv("PATH") == NULL)
		setenv("PATH", "/usr/local/bin:/usr/bin:/bin", 1);
	rv = run_to_end(NULL, &args);
	free_argv(&args);
	(void)rv;  /* a failed cleanup must not drain the node */
	return 0;
}
