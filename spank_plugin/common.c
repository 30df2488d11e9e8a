/*
 * Helpers without Slurm calls: comma lists, argv building, environment blocks, values from result lines.
 * Their input comes from the user (options, the container's environment, the result pipe of a process the user
 * could trace), and they run inside root's slurmstepd: every length is bounded, every allocation checked.
 * tests/hostile.c feeds them hostile input under AddressSanitizer.
 */
#include "pyenroot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* A PMIx server's variable in slurmstepd's environment that the container's start needs; not a task's rank. */
int step_pmix_variable(const char *entry)
{
	size_t len = strcspn(entry, "=");

	return entry[len] == '=' && len > 5 && !strncmp(entry, "PMIX_", 5) && !job_variable_denied(entry);
}

/* Whether the first n entries of `list` hold a variable of the same name as `entry` (KEY=VALUE). */
int env_list_has(char *const *list, size_t n, const char *entry)
{
	size_t len = strcspn(entry, "=");

	for (size_t i = 0; i < n; i++)
		if (!strncmp(list[i], entry, len) && list[i][len] == '=')
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
