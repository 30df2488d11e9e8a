/*
 * The srun/sbatch --container-* options (pyxis's table and messages), the plugstack.conf arguments and the
 * PYXIS_CONTAINER_* / PYENROOT_CONTAINER_* fallbacks. Handlers check only what needs no knowledge of images,
 * mounts or the node; everything else (mount grammar included) is checked once, by `pyenroot spank start`.
 */
#include "pyenroot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct options opt = { .mount_home = -1, .remap_root = -1, .entrypoint = -1, .entrypoint_log = -1,
		       .writable = -1 };
struct config cfg = { .runtime_path = "/run/pyenroot", .container_scope = "global", .fanout = "auto",
		      .remap_root = -1, .execute_entrypoint = 0, .sbatch_support = 1, .use_squashfuse = 1 };

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
	if (!strcmp(key, "fanout")) {
		if (strcmp(value, "auto") && strcmp(value, "sbcast") && strcmp(value, "off")) {
			slurm_error(PFX "%s: invalid value: %s", key, value);
			return -1;
		}
		return copy_value(cfg.fanout, sizeof(cfg.fanout), key, value);
	}
	if (!strcmp(key, "fanout_shared"))
		return copy_value(cfg.fanout_shared, sizeof(cfg.fanout_shared), key, value);
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

/* Whether srun should offer the step's image to its nodes: a registry image (not a path: '.' or '/'), imported by
 * pyenroot itself (an external importer has its own ways). Whether it is broadcast is the Python side's choice. */
int fanout_wanted(void)
{
	return strcmp(cfg.fanout, "off") && opt.image != NULL && opt.image[0] != '.' && opt.image[0] != '/' &&
	       cfg.importer[0] == '\0';
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
