/*
 * The step's commands: `pyenroot spank start` once per step and node (it ends as the container's stopped anchor
 * process), `spank cleanup` when the step's last local task ends, `spank epilog` when a job ends. spawn.c runs
 * them as the job user.
 */
#include "pyenroot.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
	if (spank_get_item(sp, S_JOB_TOTAL_TASK_COUNT, &total) != ESPANK_SUCCESS)
		total = 0;
	argv_push_num(a, "--total-tasks", total);
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
	/* srun's `spank fanout` may have sent the image here; the tasks need not see that. */
	if (spank_getenv(sp, BROADCAST_VARIABLE, buf, sizeof(buf)) == ESPANK_SUCCESS)
		argv_push_opt(a, "--broadcast", buf);
	(void)spank_unsetenv(sp, BROADCAST_VARIABLE);
	argv_push_opt(a, "--name", opt.name);
	argv_push_opt(a, "--mounts", opt.mounts);
	argv_push_opt(a, "--save", opt.save);
	argv_push_opt(a, "--env-names", opt.env_names);
	argv_push_opt(a, "--unshare", opt.unshare);
	if (opt.mount_home != -1)
		argv_push_bool(a, "--mount-home", opt.mount_home);
	if (opt.remap_root != -1 || cfg.remap_root != -1)
		argv_push_bool(a, "--remap-root", opt.remap_root != -1 ? opt.remap_root : cfg.remap_root);
	/* --container-workdir and --container-entrypoint-log stay here: each task enters the directory
	 * (join.c), and start_container shows the log. */
	argv_push_bool(a, "--entrypoint", opt.entrypoint != -1 ? opt.entrypoint : cfg.execute_entrypoint);
	if (opt.writable != -1)
		argv_push_bool(a, "--writable", opt.writable);
}

/* srun, once per step, after the allocation exists and before the launch: `pyenroot spank fanout`, which decides
 * whether the step's nodes share a cache and, if not, imports the image once and sbcasts it to them. Its
 * "broadcast" line becomes a variable of the job's environment (spawn.c); any failure only means that every node
 * imports the image itself, so nothing here fails the step. */
void broadcast_image(spank_t sp)
{
	struct argv_builder args = { 0 };
	struct child child;
	uint32_t nodes = 0;
	int logfd, resfd, status;

	unsetenv(BROADCAST_VARIABLE);  /* never one inherited from an outer step */
	if (!fanout_wanted() || spank_get_item(sp, S_JOB_ID, &st.jobid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_STEPID, &st.stepid) != ESPANK_SUCCESS)
		return;
	if (spank_get_item(sp, S_JOB_NNODES, &nodes) != ESPANK_SUCCESS)
		nodes = 0;
	/* auto never broadcasts to one node (fanout.should_broadcast): spare single-node steps a Python start. */
	if (nodes < 2 && strcmp(cfg.fanout, "sbcast"))
		return;
	command(&args, "fanout", 1);
	argv_push_num(&args, "--nodes", nodes);
	argv_push_opt(&args, "--fanout", cfg.fanout);
	argv_push_opt(&args, "--fanout-shared", cfg.fanout_shared);
	argv_push_opt(&args, "--image", opt.image);
	if (spawn_local(&args, &child, &logfd, &resfd) < 0) {
		slurm_error(PFX "couldn't run pyenroot: %s", strerror(errno));
		argv_free(&args);
		return;
	}
	argv_free(&args);
	read_results(resfd);
	status = wait_child(&child, 0);
	if (child.pidfd >= 0)
		close(child.pidfd);
	if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		unsetenv(BROADCAST_VARIABLE);
		slurm_error(PFX "fanout failed: each node imports the image itself");
		show_log(logfd, 1);
	}
	close(logfd);
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

/* The per-step file `pyenroot spank start` leaves in the node-local runtime directory (its state): without
 * "cleanup 1" the plugin deletes it itself instead of a second Python start at the end of every step, and the
 * one file an "unlink PATH" line named (a broadcast image the container was started from). */
static void remove_step_files(void)
{
	char path[700];
	const char *const list[] = { path, st.unlink_path };

	snprintf(path, sizeof(path), "%s/%u/step-%u.%u.json", cfg.runtime_path, (unsigned)st.uid, (unsigned)st.jobid,
		 (unsigned)st.stepid);
	unlink_as_user(list, st.unlink_path[0] ? 2 : 1);
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

/* The tags the job's steps resolved on this node (`job-JOB.images`, pyenroot/slurm/state.py) end with the job,
 * whatever the scope: deleted here, without a Python start. */
void forget_job_images(void)
{
	char path[700];
	const char *const list[] = { path };
	struct stat sb;

	snprintf(path, sizeof(path), "%s/%u/job-%u.images", cfg.runtime_path, (unsigned)st.uid, (unsigned)st.jobid);
	if (lstat(path, &sb) == 0)  /* as root only a look: the user's directory is theirs, so is the unlink */
		unlink_as_user(list, 1);
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
