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
 *   - The child's environment is the job's minus node and Python settings (job_variable_denied), plus the PMIx
 *     server's PMIX_* variables from slurmstepd's own environment (step_pmix_variable), and gets
 *     stdin /dev/null, stdout/stderr in a memfd (the log), fd 3 the result pipe; every other fd is closed.
 *   - The parent stays root and reads what the user's process produced: the result lines (at most MAX_RESULTS
 *     bytes, values checked by parse_pid/parse_hex), the anchor's /proc/PID/environ (at most MAX_ENVIRON bytes)
 *     and cwd. It signals and waits for the anchor through a pidfd opened while the anchor was its unreaped
 *     child, so a PID that slurmstepd reaped and the kernel gave to another process is never signalled.
 *   - Each task (join.c) runs as the job user already: it joins the anchor's namespaces and installs the
 *     seccomp program the Python side sent; both only affect the user's own task.
 */
#include "pyenroot.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

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
static void exec_child(struct argv_builder *args, char **env, int devnull, int logfd, int result_fd, gid_t *seen,
		       int switch_user)
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
	if (switch_user && become_user(seen, STDERR_FILENO) < 0)
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

	size_t server = 0;

	if (sp && spank_get_item(sp, S_JOB_ENV, &job_env) != ESPANK_SUCCESS)
		job_env = NULL;
	while (job_env && job_env[n])
		n++;
	while (environ[server])
		server++;
	if ((env = calloc(n + server + 6, sizeof(char *))) == NULL)
		return NULL;
	for (size_t i = 0; i < n && !failed; i++)
		if (!job_variable_denied(job_env[i]))
			failed |= (env[k++] = strdup(job_env[i])) == NULL;
	/* mpi/pmix's server runs in slurmstepd and announces itself (PMIX_SERVER_TMPDIR, PMIX_SERVER_URI*...) in
	 * slurmstepd's own environment, which the tasks get later: the container needs them now (50-slurm-pmi). */
	for (size_t i = 0; i < server && !failed; i++)
		if (step_pmix_variable(environ[i]) && !env_list_has(env, k, environ[i]))
			failed |= (env[k++] = strdup(environ[i])) == NULL;
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

/* srun's own environment (srun runs as the user), with the result fd's number instead of any inherited one. */
static char **local_environment(void)
{
	size_t n = 0, k = 0;
	char **env;

	while (environ[n])
		n++;
	if ((env = calloc(n + 2, sizeof(char *))) == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "PYENROOT_SPANK_RESULT_FD=", 25) && (env[k] = strdup(environ[i])) != NULL)
			k++;
	if (asprintf(&env[k], "PYENROOT_SPANK_RESULT_FD=%d", RESULT_FD) < 0) {
		env[k] = NULL;
		free_environment(env);
		return NULL;
	}
	return env;
}

/* Fork + exec pyenroot with `env` (taken over), as the job user when `switch_user`; its output goes to *log_fd (a
 * memfd), its results to *result_fd. */
static int spawn_with(char **env, int switch_user, struct argv_builder *args, struct child *child, int *log_fd,
		      int *result_fd)
{
	int pipefd[2] = { -1, -1 }, fds[4] = { -1, -1, -1, -1 };  /* read, write, log, /dev/null */
	gid_t *seen = NULL;
	pid_t pid;

	if (args->failed || args->n == 0) {
		free_environment(env);
		errno = ENOMEM;
		return -1;
	}
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		free_environment(env);
		return -1;
	}
	fds[0] = high_fd(pipefd[0]);
	fds[1] = high_fd(pipefd[1]);
	fds[2] = high_fd(memfd_create("pyenroot-log", MFD_CLOEXEC));
	fds[3] = high_fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
	seen = calloc((size_t)st.ngids + 1, sizeof(gid_t));
	if (fds[0] < 0 || fds[1] < 0 || fds[2] < 0 || fds[3] < 0 || seen == NULL) {
		if (seen == NULL)
			errno = ENOMEM;
		goto fail;
	}
	pid = fork();
	if (pid == 0)
		exec_child(args, env, fds[3], fds[2], fds[1], seen, switch_user);
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

/* In slurmstepd (root): the command as the job user, in the job's environment. */
int spawn(spank_t sp, struct argv_builder *args, struct child *child, int *log_fd, int *result_fd)
{
	char **env = child_environment(sp);

	if (env == NULL) {
		errno = ENOMEM;
		return -1;
	}
	return spawn_with(env, 1, args, child, log_fd, result_fd);
}

/* In srun, which already runs as the user: no switch, srun's environment. */
int spawn_local(struct argv_builder *args, struct child *child, int *log_fd, int *result_fd)
{
	char **env = local_environment();

	if (env == NULL) {
		errno = ENOMEM;
		return -1;
	}
	return spawn_with(env, 0, args, child, log_fd, result_fd);
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

/* One result line (see pyenroot/slurm/reporter.py): written by a process the user could trace, so checked. */
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
	} else if (!strcmp(line, "broadcast")) {
		/* srun: what `spank fanout` sent to the step's nodes; slurmstepd finds it in the job's environment. */
		if (setenv(BROADCAST_VARIABLE, text, 1) < 0)
			slurm_error(PFX "couldn't pass the broadcast image on: %s", strerror(errno));
	} else if (!strcmp(line, "unlink")) {
		if (text[0] != '/' || strlen(text) >= sizeof(st.unlink_path))
			protocol_error("an invalid file to remove");
		else
			strcpy(st.unlink_path, text);
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
