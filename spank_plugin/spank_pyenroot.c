/*
 * spank_pyenroot: srun/sbatch --container-* options (pyxis compatible) backed by the pyenroot CLI.
 *
 * The plugin only checks options, execs `pyenroot spank start` as the job user once per step and node
 * (which imports/creates/starts the container and leaves a stopped anchor process), and makes every task
 * join the anchor's namespaces before exec. Every decision about images, names, mounts and environment is
 * made by the Python side; see pyenroot/slurm/reporter.py for the other half of the protocol.
 *
 * Protocol: the child gets a pipe on fd 3 and writes lines "log TEXT" (shown to the user), "info TEXT"
 * (slurmd log), "error TEXT" (shown, step fails), "join PID" (namespaces to join instead of the anchor's),
 * "seccomp HEX" (a classic BPF program installed in each task), "cleanup 1" (run `pyenroot spank cleanup` at
 * step end; otherwise the plugin only deletes the step's two files itself). It then becomes the container's anchor,
 * a shell that stops itself; its environment and cwd are the tasks' environment and default cwd.
 *
 * This file: the SPANK entry points, by context; pyenroot.h lists the others.
 */
#include "pyenroot.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* srun, once per step, before the launch: the image may travel to the nodes with sbcast (step.c). */
int slurm_spank_local_user_init(spank_t sp, int ac, char **av)
{
	if (spank_context() == S_CTX_LOCAL && enabled())
		broadcast_image(sp);
	return 0;
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

/* At job end on every node the job used: its record of resolved images goes, and job-scoped named containers. */
int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
	/* Slurm does not always call init before the epilog in this context: the arguments come with it too. */
	if (parse_config(ac, av))
		return 0;
	/* The job script context has no job items: slurmd passes the job's identity in the environment. */
	if (!job_from_environment() || set_groups(NULL, 0))
		return 0;
	forget_job_images();
	if (strcmp(cfg.container_scope, "job") == 0)
		run_epilog();
	return 0;
}
