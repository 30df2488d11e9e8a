"""Configuration of a start: config script, environ.d/mounts.d/hooks.d of SYSCONF and CONFIG, precedence, rc."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_start import make_container, put_file


@pytest.fixture
def bb(user, busybox_sqsh) -> Path:
    return make_container(user, busybox_sqsh)


@pytest.fixture
def sysconf(user) -> Path:
    """A system configuration directory (ENROOT_SYSCONF_PATH) the test controls."""
    path = user.make_dir("sysconf")
    user.extra_env["ENROOT_SYSCONF_PATH"] = str(path)
    return path


@pytest.fixture
def userconf(user) -> Path:
    return user.make_dir(".config/enroot")


def env_of(result) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def test_environment_precedence(user, bb, sysconf, userconf):
    names = ["IMG", "SYS", "USR", "FN", "CLI", "HOOK"]
    put_file(user, bb / "etc/environment", "".join(f"{n}=image\n" for n in names) + "TERMCOPY=${TERM}\n")
    put_file(user, sysconf / "environ.d/50-site.env", "".join(f"{n}=system\n" for n in names[1:]))
    put_file(user, userconf / "environ.d/50-mine.env", "".join(f"{n}=user\n" for n in names[2:]))
    script = put_file(user, user.home / "conf.sh", "environ() {\n" + "".join(
        f"  echo {n}=script\n" for n in names[3:]) + "}\n")
    put_file(user, userconf / "hooks.d/50-env.sh", '#!/bin/sh\necho HOOK=hook >> "$ENROOT_ENVIRON"\n', 0o755)
    result = user.pyenroot("start", "-c", str(script), "-e", "CLI=cli", "-e", "HOOK=cli", "-e", "FROMHOST",
                           "bb", "env", env={"TERM": "vt100", "FROMHOST": "host", "NOTPASSED": "x"})
    env = env_of(result)
    assert [env[n] for n in names] == ["image", "system", "user", "script", "cli", "hook"]
    assert env["TERMCOPY"] == "vt100"
    assert env["TERM"] == "vt100"  # the built-in 10-terminal.env
    assert env["FROMHOST"] == "host"
    assert "NOTPASSED" not in env


def test_mounts_from_each_config_dir(user, bb, sysconf, userconf):
    a, b = user.make_dir("a"), user.make_dir("b")
    put_file(user, a / "file", "from system\n")
    put_file(user, b / "file", "from user\n")
    put_file(user, sysconf / "mounts.d/50-site.fstab", f"{a} /mnt/a none x-create=dir,bind,ro\n")
    put_file(user, userconf / "mounts.d/50-mine.fstab", f"{b} /mnt/b none x-create=dir,bind,ro\n")
    result = user.pyenroot("start", "bb", "cat", "/mnt/a/file", "/mnt/b/file")
    assert result.stdout == "from system\nfrom user\n", result.stderr


def test_builtin_config_file_replaced_by_same_name(user, bb, userconf):
    assert user.pyenroot("start", "bb", "test", "-s", "/etc/resolv.conf").returncode == 0
    (bb / "etc/resolv.conf").unlink(missing_ok=True)
    put_file(user, userconf / "mounts.d/20-config.fstab", "# switched off\n")
    result = user.pyenroot("start", "bb", "sh", "-c", "test -s /etc/resolv.conf && echo bound || echo absent")
    assert result.stdout.strip() == "absent"


def test_hooks_from_each_dir_in_order(user, bb, sysconf, userconf):
    log = user.make_dir("log") / "hooks"
    for where, name in ((sysconf, "20-b.sh"), (sysconf, "10-a.sh"), (userconf, "05-c.sh")):
        put_file(user, where / "hooks.d" / name, f'#!/bin/sh\necho "{name} $ENROOT_PID $(id -u)" >> {log}\n'
                 'test -d "$ENROOT_ROOTFS/etc" && test -f "$ENROOT_ENVIRON" && test -f "$ENROOT_MOUNTS"\n', 0o755)
    put_file(user, userconf / "hooks.d/99-not-executable.sh", "#!/bin/sh\nexit 1\n", 0o644)
    put_file(user, userconf / "hooks.d/README", "not a hook\n", 0o755)
    proc_pid = user.pyenroot("start", "bb", "sh", "-c", "echo $$")
    assert proc_pid.returncode == 0, proc_pid.stderr
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [line[0] for line in lines] == ["10-a.sh", "20-b.sh", "05-c.sh"]
    assert all(line[2] == str(user.uid) for line in lines)
    assert lines[0][1] == proc_pid.stdout.strip()  # ENROOT_PID is the container's process


def test_hook_mounts(user, bb, userconf):
    data = user.make_dir("hookdata")
    put_file(user, data / "f", "via hook\n")
    put_file(user, userconf / "hooks.d/50-mount.sh",
             f'#!/bin/sh\necho "{data} /mnt/hook none x-create=dir,bind,ro" >> "$ENROOT_MOUNTS"\n', 0o755)
    assert user.pyenroot("start", "bb", "cat", "/mnt/hook/f").stdout == "via hook\n"


def test_failing_hook_aborts(user, bb, userconf):
    put_file(user, userconf / "hooks.d/50-broken.sh", "#!/bin/sh\nexit 3\n", 0o755)
    result = user.pyenroot("start", "bb", "echo", "should not run")
    assert result.returncode != 0
    assert "50-broken.sh exited with return code 3" in result.stderr
    assert "should not run" not in result.stdout


def test_builtin_hook_switched_off(user, bb, userconf):
    put_file(user, userconf / "hooks.d/10-shadow.sh", "", 0o644)
    result = user.pyenroot("start", "bb", "grep", "-c", user.name, "/etc/passwd")
    assert result.stdout.strip() == "0"


def test_config_script(user, bb):
    data = user.make_dir("scriptdata")
    put_file(user, data / "f", "mounted by script\n")
    log = user.home / "hooks-fn.log"
    script = put_file(user, user.home / "conf.sh", f"""#!/bin/bash
#ENROOT_REMAP_ROOT=y
#ENROOT_MOUNT_HOME=n
echo "script output is discarded"
NARGS=$#  # the script is sourced with the container's command as its parameters
environ() {{
  echo "FROM_SCRIPT=yes"
  echo "ARGS=$NARGS"
}}
mounts() {{
  echo "{data} /mnt/script none x-create=dir,bind,ro"
}}
hooks() {{
  echo "HOOKS_FN=ran" >> "$ENROOT_ENVIRON"
  id -u > {log}
}}
rc() {{
  echo "rc with $# args"
  exec "$@"
}}
""")
    result = user.pyenroot("start", "-c", str(script), "bb", "sh", "-c",
                           'id -u; echo $FROM_SCRIPT $ARGS $HOOKS_FN; cat /mnt/script/f')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["rc with 3 args", "0", "yes 3 ran", "mounted by script"]
    assert log.read_text().strip() == "0"


def test_config_script_errors(user, bb):
    bad = put_file(user, user.home / "bad.sh", "environ() {\n")
    result = user.pyenroot("start", "-c", str(bad), "bb", "true")
    assert result.returncode != 0
    assert "invalid configuration script" in result.stderr and "Traceback" not in result.stderr
    missing = user.pyenroot("start", "-c", str(user.home / "nope.sh"), "bb", "true")
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_cli_flag_beats_directive(user, bb):
    script = put_file(user, user.home / "conf.sh", "#ENROOT_ROOTFS_WRITABLE=n\n")
    result = user.pyenroot("start", "-c", str(script), "--rw", "bb", "touch", "/written")
    assert result.returncode == 0, result.stderr


def test_rc_option(user, bb):
    rc = put_file(user, user.home / "myrc", 'echo "custom rc: $*"\nexec "$@"\n')
    result = user.pyenroot("start", "--rc", str(rc), "bb", "echo", "hi")
    assert result.stdout.splitlines() == ["custom rc: echo hi", "hi"]


def test_image_rc_runs_with_the_command(user, bb):
    put_file(user, bb / "etc/rc", '#!/bin/sh\necho "rc sees: $*"\nexec "$@"\n', 0o755)
    result = user.pyenroot("start", "bb", "echo", "hello")
    assert result.stdout.splitlines() == ["rc sees: echo hello", "hello"]


def test_first_release_image_with_only_rc_local(user, bb):
    put_file(user, bb / "etc/rc.local", '#!/bin/sh\necho "rc.local: $*"\nexec "$@"\n', 0o755)
    result = user.pyenroot("start", "bb", "echo", "seed")
    assert result.stdout.splitlines() == ["rc.local: echo seed", "seed"]


@pytest.mark.parametrize(("value", "expected"), [("true", "profile-read"), ("n", "")])
def test_login_shell_setting(user, bb, value, expected):
    put_file(user, bb / "etc/profile", "export PROFILE_MARK=profile-read\n")
    put_file(user, bb / "etc/rc", 'exec "$@"\n', 0o755)
    result = user.pyenroot("start", "bb", "sh", "-c", "echo \"[$PROFILE_MARK]\"", env={"ENROOT_LOGIN_SHELL": value})
    assert result.stdout.strip() == f"[{expected}]", result.stderr


def test_init_shell_setting(user, bb):
    put_file(user, bb / "etc/rc", 'echo "shell ok"\n', 0o644)
    assert user.pyenroot("start", "bb", env={"ENROOT_INIT_SHELL": "/bin/ash"}).stdout.strip() == "shell ok"
    result = user.pyenroot("start", "bb", "true", env={"ENROOT_INIT_SHELL": "/bin/nosuchshell"})
    assert result.returncode != 0
    assert "/bin/nosuchshell" in result.stderr


def test_ignored_environment_lines_and_unset_env_warn(user, bb, userconf):
    mine = put_file(user, userconf / "environ.d/50-mine.env",
                    "# a comment\n\nGOOD=yes\nexport X=1\nA = b\nENROOT_DATA_PATH=/x\n")
    result = user.pyenroot("start", "-e", "NOSUCHVAR", "-e", "NOSUCHVAR", "bb", "env", env={"NOSUCHVAR": None})
    env = env_of(result)
    assert env["GOOD"] == "yes" and env["NOSUCHVAR"] == "" and "X" not in env
    warnings = [line for line in result.stderr.splitlines() if line.startswith("pyenroot: warning:")]
    assert warnings == [
        f"pyenroot: warning: {mine}: ignored line 4 'export X=1', line 5 'A = b', line 6 'ENROOT_DATA_PATH=/x' "
        "(NAME=value expected; ENROOT_* names are reserved)",
        "pyenroot: warning: --env NOSUCHVAR: NOSUCHVAR is not set here, so the container gets it empty",
    ]
    quiet = user.pyenroot("start", "-e", "SETVAR", "bb", "true", env={"SETVAR": ""})
    assert quiet.returncode == 0 and "NOSUCHVAR" not in quiet.stderr and "SETVAR" not in quiet.stderr


def test_logname_from_the_passwd_entry_without_user_or_logname(user, bb):
    result = user.pyenroot("start", "bb", "env", env={"USER": None, "LOGNAME": None})
    assert env_of(result)["LOGNAME"] == user.name
