/*
 * spawn.c for real, as root, outside Slurm: `spawn [closed] UID GID GROUP...` runs a shell as UID:GID with those
 * groups, the way the plugin runs `pyenroot spank ...`, and prints what it saw, one "KEY VALUE" a line, on the
 * fd its stderr had. With `closed`, fds 0-2 are closed first, as slurmd runs the epilog: the child must still
 * get /dev/null, the log and the result pipe on 0-3 and nothing else.
 */
#include "pyenroot.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct step st = { .anchor_pidfd = -1 };
static FILE *report;

static void say(const char *key, const char *format, va_list ap)
{
	fprintf(report, "%s ", key);
	vfprintf(report, format, ap);
	fputc('\n', report);
	fflush(report);
}

/* Slurm's three loggers: each message becomes a "KIND TEXT" line of the report. */
#define LOGGER(function, kind)                  \
	void function(const char *format, ...)  \
	{                                       \
		va_list ap;                     \
		va_start(ap, format);           \
		say(kind, format, ap);          \
		va_end(ap);                     \
	}

LOGGER(slurm_error, "error")
LOGGER(slurm_info, "info")
LOGGER(slurm_spank_log, "log")

spank_err_t spank_get_item(spank_t sp, spank_item_t item, ...)
{
	return ESPANK_NOT_AVAIL;  /* never called: sp is NULL */
}

static const char script[] =
	"echo \"log uid=$(id -u) gid=$(id -g) groups=$(id -G)\" >&3\n"
	"set -- /proc/$$/fd/*; fds=; for f; do fds=\"$fds ${f##*/}\"; done; echo \"log fds=$fds\" >&3\n"
	"echo \"log stdin=[$(cat)]\" >&3\n"
	"echo \"log result-fd=$PYENROOT_SPANK_RESULT_FD\" >&3\n"
	"echo to-stdout; echo to-stderr >&2\n"
	"printf 'log no newline at the end' >&3\n";

int main(int argc, char **argv)
{
	struct argv_builder args = { 0 };
	struct child child;
	int closed = argc > 1 && !strcmp(argv[1], "closed"), first = 1 + closed, logfd, resfd, status;
	char log[4096];
	ssize_t n;

	if (argc - first < 3)
		return 2;
	report = fdopen(fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 20), "w");
	if (closed)
		for (int fd = 0; fd < 3; fd++)
			close(fd);
	st.uid = (uid_t)strtoul(argv[first], NULL, 10);
	st.gid = (gid_t)strtoul(argv[first + 1], NULL, 10);
	st.ngids = argc - first - 2;
	st.gids = calloc((size_t)st.ngids, sizeof(gid_t));
	for (int i = 0; i < st.ngids; i++)
		st.gids[i] = (gid_t)strtoul(argv[first + 2 + i], NULL, 10);
	strcpy(cfg.pyenroot, "/bin/sh");
	argv_push(&args, "/bin/sh");
	argv_push(&args, "-c");
	argv_push(&args, script);
	if (spawn(NULL, &args, &child, &logfd, &resfd) < 0)
		return 3;
	fprintf(report, "parent-fds log=%d results=%d\n", logfd, resfd);
	read_results(resfd);
	status = wait_child(&child, 0);
	fprintf(report, "exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	n = pread(logfd, log, sizeof(log) - 1, 0);
	log[n > 0 ? n : 0] = '\0';
	for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n"))
		fprintf(report, "output %s\n", line);
	close(logfd);
	if (child.pidfd >= 0)
		close(child.pidfd);
	argv_free(&args);
	free(st.gids);
	fclose(report);
	return 0;
}
