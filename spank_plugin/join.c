/*
 * Each task, just before it execs (task_init, already the job user): the anchor's environment, its namespaces,
 * the working directory and the seccomp program; after this the task is in the container.
 */
#include "pyenroot.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

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
