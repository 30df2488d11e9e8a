/*
 * The plugin's Slurm-free code (options.c, common.c) on hostile input, built with AddressSanitizer and UBSan
 * (`make -C spank_plugin check`): environment blocks without a last NUL, with empty entries and embedded NULs,
 * huge values, malformed option values and plugstack arguments, result values from a process the user controls.
 * Any read past a buffer, leak or undefined behaviour aborts; a wrong answer fails a CHECK.
 *
 *   hostile              run every case; prints "ok N checks"
 *   hostile bool WORD..  print parse_bool's answer for each WORD, one a line (tests/unit compares it with Python)
 */
#include "pyenroot.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ Slurm stand-ins */

static char last_error[512];
static int errors;

void slurm_error(const char *format, ...)
{
	va_list ap;

	va_start(ap, format);
	vsnprintf(last_error, sizeof(last_error), format, ap);
	va_end(ap);
	errors++;
}

/* ------------------------------------------------------------------------------------------ checking */

static int checks;

#define CHECK(cond)                                                                          \
	do {                                                                                 \
		checks++;                                                                    \
		if (!(cond)) {                                                               \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			exit(1);                                                             \
		}                                                                            \
	} while (0)

static char *repeat(const char *unit, size_t times)
{
	size_t n = strlen(unit);
	char *s = malloc(n * times + 1);

	CHECK(s != NULL);
	if (n == 1)
		memset(s, unit[0], times);
	else
		for (size_t i = 0; i < times; i++)
			memcpy(s + i * n, unit, n);
	s[n * times] = '\0';
	return s;
}

/* An environment block of exactly len + 1 bytes, as env_block_read returns it: ASan sees any overread. */
static struct env_block block(const char *bytes, size_t len)
{
	struct env_block b = { malloc(len + 1), len };

	CHECK(b.data != NULL);
	memcpy(b.data, bytes, len);
	b.data[len] = '\0';
	return b;
}

static const char *write_file(const char *bytes, size_t len)
{
	static char path[] = "/tmp/pyenroot-hostile-XXXXXX";
	int fd;

	strcpy(path, "/tmp/pyenroot-hostile-XXXXXX");
	fd = mkstemp(path);
	CHECK(fd >= 0);
	for (size_t done = 0; done < len;) {
		ssize_t n = write(fd, bytes + done, len - done);
		CHECK(n > 0);
		done += (size_t)n;
	}
	close(fd);
	return path;
}

/* ------------------------------------------------------------------------------------------ environment */

struct recorded {
	int sets, unsets, overwrites;
	char last_name[64], last_value[64];
};

static void record_set(void *ctx, const char *name, const char *value, int overwrite)
{
	struct recorded *r = ctx;

	r->sets++;
	r->overwrites += overwrite;
	snprintf(r->last_name, sizeof(r->last_name), "%s", name);
	snprintf(r->last_value, sizeof(r->last_value), "%s", value);
}

static void record_unset(void *ctx, const char *name)
{
	((struct recorded *)ctx)->unsets++;
}

static struct recorded merge(const struct env_block *b, const char *keep)
{
	struct recorded r = { 0 };
	const struct env_sink sink = { record_set, record_unset, &r };

	CHECK(env_block_merge(b, keep, &sink) == 0);
	return r;
}

static void test_environment_blocks(void)
{
	static const char no_last_nul[] = "A=1\0B=2\0LANG=C.UTF-8\0LONGNAME=3";  /* sizeof - 1: no NUL at the end */
	static const char junk[] = "\0\0=x\0noequals\0\0A=\0==\0B";
	struct env_block b = block(no_last_nul, sizeof(no_last_nul) - 1);
	struct recorded r;
	size_t offset = 0, count = 0;
	char *huge;
	const char *path;

	CHECK(strcmp(env_block_lookup(&b, "LONGNAME"), "3") == 0);
	CHECK(env_block_lookup(&b, "LONG") == NULL);
	CHECK(env_block_lookup(&b, "LONGNAME=3") == NULL);
	CHECK(env_block_lookup(&b, "") == NULL);
	while (env_block_next(&b, &offset))
		count++;
	CHECK(count == 4);
	r = merge(&b, NULL);
	CHECK(r.sets == 4 && r.overwrites == 4 && r.unsets == 2);  /* LANGUAGE and LC_ALL are not in the block */
	CHECK(strcmp(r.last_name, "LONGNAME") == 0 && strcmp(r.last_value, "3") == 0);
	r = merge(&b, "B,,LANGUAGE,");
	CHECK(r.sets == 4 && r.overwrites == 3 && r.unsets == 1);
	env_block_free(&b);

	b = block(junk, sizeof(junk) - 1);
	r = merge(&b, ",");
	CHECK(r.sets == 1 && strcmp(r.last_name, "A") == 0 && strcmp(r.last_value, "") == 0);
	CHECK(env_block_lookup(&b, "B") == NULL);
	env_block_free(&b);

	b = block("", 0);
	r = merge(&b, "");
	CHECK(r.sets == 0 && r.unsets == 3);
	env_block_free(&b);
	b = (struct env_block){ 0 };  /* never read (the anchor was not captured) */
	CHECK(env_block_lookup(&b, "A") == NULL && merge(&b, NULL).sets == 0);

	/* One 5 MiB entry without a NUL, through the file reader. */
	huge = repeat("x", 5 << 20);
	memcpy(huge, "BIG=", 4);
	path = write_file(huge, 5 << 20);
	CHECK(env_block_read(path, &b) == 0);
	CHECK(b.len == (5u << 20) && strlen(env_block_lookup(&b, "BIG")) == (5u << 20) - 4);
	r = merge(&b, huge);
	CHECK(r.sets == 1);
	env_block_free(&b);
	unlink(path);
	free(huge);

	/* A file without a last NUL, and one past MAX_ENVIRON. */
	path = write_file(no_last_nul, sizeof(no_last_nul) - 1);
	CHECK(env_block_read(path, &b) == 0 && strcmp(env_block_lookup(&b, "LONGNAME"), "3") == 0);
	env_block_free(&b);
	unlink(path);
	huge = repeat("y", MAX_ENVIRON + 1);
	path = write_file(huge, MAX_ENVIRON + 1);
	CHECK(env_block_read(path, &b) == -1 && errno == EFBIG && b.data == NULL);
	unlink(path);
	free(huge);
	CHECK(env_block_read("/nonexistent/environ", &b) == -1 && b.data == NULL);
}

static void test_job_variables(void)
{
	CHECK(job_variable_denied("PATH=/bin") && job_variable_denied("LD_PRELOAD=") && job_variable_denied("PATH"));
	CHECK(job_variable_denied("") && job_variable_denied("PYENROOT_SPANK_RESULT_FD=9"));
	CHECK(!job_variable_denied("PATHX=1") && !job_variable_denied("PAT=1") && !job_variable_denied("=x"));
}

/* ------------------------------------------------------------------------------------------ argv */

static void test_argv(void)
{
	struct argv_builder a = { 0 };
	char *big = repeat("z", 1 << 20);

	for (int i = 0; i < 10000; i++)
		argv_push(&a, i % 1000 ? "x" : big);
	argv_push_num(&a, "--job", LONG_MIN);
	argv_push_bool(&a, "--writable", 7);
	argv_push_opt(&a, "--image", NULL);
	CHECK(!a.failed && a.n == 10004 && a.items[a.n] == NULL);
	CHECK(strcmp(a.items[10001], "-9223372036854775808") == 0 && strcmp(a.items[10003], "y") == 0);
	CHECK(strlen(a.items[0]) == (1u << 20));
	argv_free(&a);
	CHECK(a.items == NULL && a.n == 0);
	argv_push_bool(&a, "--mount-home", 0);
	CHECK(a.n == 2 && strcmp(a.items[1], "n") == 0);
	argv_free(&a);
	argv_free(&a);
	free(big);
}

/* ------------------------------------------------------------------------------------------ options */

static void reset_options(void)
{
	char **strings[] = { &opt.image, &opt.workdir, &opt.name, &opt.save, &opt.env_names, &opt.unshare,
			     &opt.mounts };

	for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
		free(*strings[i]);
		*strings[i] = NULL;
	}
	opt.mount_home = opt.remap_root = opt.entrypoint = opt.entrypoint_log = opt.writable = -1;
}

static int option(const char *name, const char *value)
{
	for (struct spank_option *o = option_table; o->name; o++)
		if (!strcmp(o->name, name))
			return o->cb(o->val, value, 1);
	CHECK(!"no such option");
	return -1;
}

static void test_options(void)
{
	static const char *const strings[] = { "container-image", "container-workdir", "container-save",
						"container-name", "container-env", "container-unshare",
						"container-mounts", NULL };
	char *huge = repeat("a", 1 << 16), *many = repeat("net,", 100000);

	for (int i = 0; strings[i]; i++) {
		CHECK(option(strings[i], NULL) == -1);
		CHECK(option(strings[i], "") == -1);
	}
	CHECK(option("container-image", huge) == 0 && option("container-image", huge) == 0);  /* Slurm's repeat */
	CHECK(option("container-image", "other") == -1 && strstr(last_error, "specified multiple times"));
	CHECK(option("container-name", ":") == -1 && option("container-name", "::") == -1);
	CHECK(option("container-name", "a:") == -1 && option("container-name", "a:auto:") == -1);
	CHECK(option("container-name", "a:no_exec") == 0);
	CHECK(option("container-save", "/") == -1 && option("container-save", "./") == -1);
	CHECK(option("container-env", ",") == -1 && option("container-env", "A,,B") == -1);
	CHECK(option("container-env", "A,B") == 0);
	CHECK(option("container-unshare", ",") == -1 && option("container-unshare", "net,") == -1);
	CHECK(option("container-unshare", huge) == -1 && strlen(last_error) < 400);
	many[strlen(many) - 1] = '\0';
	CHECK(option("container-unshare", many) == 0);
	reset_options();
	CHECK(option("container-unshare", "net,ipc,uts,ne") == -1);
	CHECK(option("container-unshare", "net,ipc,uts") == 0);

	/* Mounts are passed on as given (the Python side checks them); repeats accumulate, a double call does not. */
	CHECK(option("container-mounts", ":,,:") == 0 && option("container-mounts", ":,,:") == 0);
	CHECK(strcmp(opt.mounts, ":,,:") == 0);
	for (int i = 0; i < 100; i++)
		CHECK(option("container-mounts", i % 2 ? huge : "/a:/b") == 0);
	CHECK(strlen(opt.mounts) == 4 + 50 * ((1u << 16) + 1) + 50 * 6);

	CHECK(option("container-writable", NULL) == 0 && option("container-writable", NULL) == 0);
	CHECK(option("container-readonly", NULL) == -1 && strstr(last_error, "both --container-writable"));
	CHECK(option("no-container-mount-home", NULL) == 0 && opt.mount_home == 0);
	reset_options();
	free(huge);
	free(many);
}

static const char *fake_value;

static const char *fake_getenv(spank_t sp, const char *name, char *buf, size_t len)
{
	return fake_value;
}

static void test_environment_fallbacks(void)
{
	char *huge = repeat("q,", 1 << 19);
	static const char *const values[] = { "", ",", "0", "maybe", "y", "::", "/", "net", NULL };

	for (int i = 0; values[i]; i++) {
		fake_value = values[i];
		(void)env_fallbacks(NULL, fake_getenv);
		reset_options();
	}
	fake_value = huge;
	CHECK(env_fallbacks(NULL, fake_getenv) == -1);  /* not a namespace, a trailing ',' in --container-env */
	reset_options();
	fake_value = "n";
	CHECK(env_fallbacks(NULL, fake_getenv) == -1);  /* "n" is no namespace */
	CHECK(opt.writable == 0 && opt.mount_home == 0 && opt.image && strcmp(opt.image, "n") == 0);
	reset_options();
	free(huge);
}

static void test_plugstack_arguments(void)
{
	char *long_value = repeat("p", 600), *long_key = repeat("k", 100), *arg;
	char *ok[] = { "use_squashfuse=F", "sbatch_support=0", "remap_root=Yes", "container_scope=job",
		       "use_enroot_load=whatever", "runtime_path=/run/x" };
	char *bad[] = { "", "=", "=1", "use_squashfuse", "use_squashfuse=", "use_squashfuse=maybe",
			"use_squashfuse=oFF", "container_scope=jobs", "container_scope=", "bogus=1", long_key };

	CHECK(parse_config(6, ok) == 0);
	CHECK(cfg.use_squashfuse == 0 && cfg.sbatch_support == 0 && cfg.remap_root == 1);
	CHECK(strcmp(cfg.container_scope, "job") == 0 && strcmp(cfg.runtime_path, "/run/x") == 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK(parse_config(1, &bad[i]) == -1);
		CHECK(strlen(last_error) < 400);
	}
	CHECK(asprintf(&arg, "runtime_path=%s", long_value) > 0);
	CHECK(parse_config(1, &arg) == -1 && strstr(last_error, "value too long"));
	CHECK(strcmp(cfg.runtime_path, "/run/x") == 0);
	free(arg);
	free(long_value);
	free(long_key);
}

/* ------------------------------------------------------------------------------------------ result values */

static void test_result_values(void)
{
	static const char *const bad_pids[] = { "", "0", "-1", " 5", "5 ", "12abc", "0x10", "99999999999999999999",
						"2147483648", NULL };
	unsigned char *bytes;
	size_t len;
	pid_t pid = 0;
	char *hex = repeat("aF", 1 << 19);

	for (int i = 0; bad_pids[i]; i++)
		CHECK(parse_pid(bad_pids[i], &pid) == -1 && pid == 0);
	CHECK(parse_pid("4242", &pid) == 0 && pid == 4242);
	CHECK(parse_hex("abc", &bytes, &len) == -1 && bytes == NULL && len == 0);
	CHECK(parse_hex("zz", &bytes, &len) == -1 && bytes == NULL);
	CHECK(parse_hex("0g", &bytes, &len) == -1 && bytes == NULL);
	CHECK(parse_hex("", &bytes, &len) == 0 && len == 0);
	free(bytes);
	CHECK(parse_hex("00ff7F", &bytes, &len) == 0 && len == 3 && bytes[0] == 0 && bytes[1] == 0xff && bytes[2] == 0x7f);
	free(bytes);
	CHECK(parse_hex(hex, &bytes, &len) == 0 && len == (1u << 19) && bytes[len - 1] == 0xaf);
	free(bytes);
	free(hex);
}

static void test_lists(void)
{
	CHECK(has_empty_element("") && has_empty_element(",") && has_empty_element("a,") && has_empty_element(",a"));
	CHECK(has_empty_element("a,,b") && !has_empty_element("a") && !has_empty_element("a,b"));
	CHECK(!in_list(NULL, "a", 1) && !in_list("", "a", 1) && !in_list(",,,", "a", 1) && in_list(",,a,", "a", 1));
	CHECK(!in_list("ab", "a", 1) && !in_list("a", "ab", 2) && in_list("x,ab", "ab", 2));
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "bool")) {
		for (int i = 2; i < argc; i++)
			printf("%d\n", parse_bool(argv[i]));
		return 0;
	}
	test_environment_blocks();
	test_job_variables();
	test_argv();
	test_options();
	test_environment_fallbacks();
	test_plugstack_arguments();
	test_result_values();
	test_lists();
	printf("ok %d checks (%d error messages)\n", checks, errors);
	return 0;
}
