"""`pyenroot start` as an unprivileged user: identity, namespaces, exit codes, signals, stdin, isolation."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers.processes import stopped_anchor
from tests.helpers.users import REPO


def data_path(user) -> Path:
    return user.home / ".local/share/enroot"


def make_container(user, image: Path, name: str = "bb") -> Path:
    """Unpack a squashfs image as the user into its data path (what `create` does)."""
    target = data_path(user) / name
    user.make_dir(".local/share/enroot")
    result = user.run(["unsquashfs", "-no-progress", "-quiet", "-d", str(target), str(image)])
    assert result.returncode == 0, result.stderr
    return target


def put_file(user, path: Path, text: str, mode: int = 0o644) -> Path:
    """Write a file as root and hand it to the user (the container's files belong to the user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    os.chown(path, user.uid, user.gid)
    return path


def popen(user, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `pyenroot ARGS` as the user without waiting (stdin/stdout are pipes)."""
    return subprocess.Popen([str(user.wrapper), *args], env=user.env(**(env or {})), cwd=str(user.home),
                            user=user.uid, group=user.gid, extra_groups=[], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def bb(user, busybox_sqsh) -> Path:
    return make_container(user, busybox_sqsh)


def test_runs_command_as_the_user(user, bb):
    result = user.pyenroot("start", "bb", "sh", "-c", "id -u; id -g; cat /etc/os-release")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [str(user.uid), str(user.gid)]
    assert "pyenroot busybox" in result.stdout


def test_exit_code_is_the_commands(user, bb):
    assert user.pyenroot("start", "bb", "sh", "-c", "exit 7").returncode == 7
    assert user.pyenroot("start", "bb", "false").returncode == 1


def test_death_by_signal_is_the_commands(user, bb):
    # An exec chain: the process that dies is the one the caller started.
    assert user.pyenroot("start", "bb", "sh", "-c", "kill -TERM $$").returncode == -signal.SIGTERM


def test_command_not_found(user, bb):
    result = user.pyenroot("start", "bb", "no-such-program")
    assert result.returncode == 127
    assert "command not found in the container: no-such-program" in result.stderr
    assert "Traceback" not in result.stderr


def test_command_not_found_through_the_image_rc(user, bb):
    """With an imported image's /etc/rc, the missing command is named, not the init script's line."""
    from pyenroot.image import imagefiles

    put_file(user, bb / "etc/rc", imagefiles.render_rc({}, "docker://registry#acc/busybox:1"))
    put_file(user, bb / "etc/rc.local", "# sourced by /etc/rc\n")
    result = user.pyenroot("start", "bb", "nosuchcmd", "arg")
    assert result.returncode == 127, result.stderr
    assert result.stderr == ("pyenroot: error: command not found in the container: nosuchcmd (not in the "
                             "container's PATH: /usr/local/bin:/usr/bin:/bin) (command-not-found)\n"), result.stderr
    assert "/etc/rc" not in result.stderr and "line " not in result.stderr
    put_file(user, bb / "etc/profile", "PATH=/bin\n")  # a login shell looks the command up after its profile
    login = user.pyenroot("start", "bb", "nosuchcmd", env={"ENROOT_LOGIN_SHELL": "y"})
    assert login.returncode == 127 and "(not in the container's PATH: /bin)" in login.stderr, login.stderr
    missing = user.pyenroot("start", "bb", "/no/such/program")
    assert missing.returncode == 127 and "/no/such/program (no such executable file)" in missing.stderr
    assert user.pyenroot("start", "bb", "echo", "found").stdout == "found\n"
    # an Entrypoint takes the arguments: what they mean is its business
    put_file(user, bb / "etc/rc", imagefiles.render_rc({"config": {"Entrypoint": ["/bin/echo"]}}, "docker://r#a"))
    assert user.pyenroot("start", "bb", "nosuchcmd").stdout == "nosuchcmd\n"


def test_stdin_passes_through(user, bb):
    result = user.pyenroot("start", "bb", "cat", input="from stdin\n")
    assert result.stdout == "from stdin\n"


def test_interactive_shell_without_command(user, bb):
    result = user.pyenroot("start", "bb", input="echo interactive $((6*7))\nexit 3\n")
    assert "interactive 42" in result.stdout
    assert result.returncode == 3


def test_no_command_runs_the_image_default(user, bb):
    """`start NAME` alone: the image's /etc/rc runs its default command (here Cmd, a script that reads stdin)."""
    from pyenroot.image import imagefiles

    put_file(user, bb / "etc/rc", imagefiles.render_rc({"config": {"Cmd": ["/bin/sh", "-c", "read x; echo got $x"]}},
                                                       "docker://registry#acc/busybox:1"))
    result = user.pyenroot("start", "bb", input="line\n")
    assert (result.returncode, result.stdout) == (0, "got line\n"), result.stderr


def test_usage_line_shows_the_command_is_optional(user):
    usage = user.pyenroot("start", "--help").stdout
    assert "NAME|IMAGE [COMMAND [ARG...]]" in " ".join(usage.split())
    missing = user.pyenroot("start")
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[0] == \
        "pyenroot: error: the following arguments are required: NAME|IMAGE (usage)", missing.stderr
    assert "CONFIG [COMMAND [ARG...]]" in user.pyenroot("batch", "--help").stdout


def test_command_string_with_spaces_runs_through_the_shell(user, bb):
    result = user.pyenroot("start", "bb", "echo a; echo b")
    assert result.stdout.split() == ["a", "b"]


def test_unknown_container(user):
    result = user.pyenroot("start", "missing", "true")
    assert result.returncode != 0
    assert "missing" in result.stderr and "Traceback" not in result.stderr


def test_root_filesystem_read_only_by_default(user, bb):
    result = user.pyenroot("start", "bb", "touch", "/newfile")
    assert result.returncode != 0
    assert "Read-only" in result.stderr
    assert not (bb / "newfile").exists()


@pytest.mark.parametrize("how", ["option", "setting"])
def test_writable_root(user, bb, how):
    args, env = (["--rw"], {}) if how == "option" else ([], {"ENROOT_ROOTFS_WRITABLE": "y"})
    result = user.pyenroot("start", *args, "bb", "sh", "-c", "echo kept > /newfile", env=env)
    assert result.returncode == 0, result.stderr
    assert (bb / "newfile").read_text() == "kept\n"


@pytest.mark.parametrize("how", ["option", "setting"])
def test_root_inside(user, bb, how):
    args, env = (["--root"], {}) if how == "option" else ([], {"ENROOT_REMAP_ROOT": "yes"})
    result = user.pyenroot("start", *args, "bb", "id", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("uid=0(root) gid=0(root)")


def test_root_inside_has_no_host_privilege(user, bb, session_dir):
    secret = session_dir / f"secret-{user.home.name}"
    secret.write_text("top secret\n")
    secret.chmod(0o600)
    try:
        result = user.pyenroot("start", "--root", "-m", f"{secret}:/secret", "bb", "cat", "/secret")
        assert result.returncode != 0
        assert "top secret" not in result.stdout
        assert "Permission denied" in result.stderr
    finally:
        secret.unlink()


@pytest.mark.parametrize("root", [False, True])
def test_files_written_through_a_bind_mount_belong_to_the_user(user, bb, root):
    shared = user.make_dir("shared")
    args = ["--root"] if root else []
    result = user.pyenroot("start", *args, "-m", f"{shared}:/mnt/shared", "bb", "sh", "-c",
                           "echo hi > /mnt/shared/out && chown 0:0 /mnt/shared/out")
    assert result.returncode == 0, result.stderr
    info = (shared / "out").stat()
    assert (info.st_uid, info.st_gid) == (user.uid, user.gid)


def test_mounts_inside_never_reach_the_host(user, bb):
    proc = popen(user, "start", "--root", "bb", "sh", "-c",
                 "mount -t tmpfs inner /tmp && echo ready && read line && echo done")
    try:
        assert proc.stdout.readline() == "ready\n"
        host_mounts = Path("/proc/self/mountinfo").read_text()
        assert str(bb) not in host_mounts
        assert " inner " not in host_mounts
        inside = Path(f"/proc/{proc.pid}/mountinfo").read_text()
        assert str(bb) in inside.split("\n")[0] or any(
            line.split()[4] == "/" and line.split()[3] == str(bb) for line in inside.splitlines())
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_same_process_and_stopped_anchor(user, bb):
    """The Slurm anchor pattern: the started PID is the container's process and can stop itself."""
    proc = popen(user, "start", "bb", "sh", "-c", "kill -STOP $$; exit 0")
    with stopped_anchor(proc) as pid:
        assert os.readlink(f"/proc/{pid}/exe").endswith("busybox")
        assert Path(f"/proc/{pid}/root/etc/os-release").read_text().count("pyenroot busybox") == 1


@pytest.mark.parametrize("how", ["option", "setting"])
def test_pid_namespace(user, bb, how):
    args, env = (["--pid"], {}) if how == "option" else ([], {"ENROOT_UNSHARE_PID": "y"})
    result = user.pyenroot("start", *args, "bb", "sh", "-c", "echo $$; ps -o pid | wc -l; exit 5", env=env)
    assert result.returncode == 5, result.stderr
    pid, count = result.stdout.split()
    assert pid == "2"  # PID 1 is pyenroot's minimal init, which forwards signals and reaps orphans
    assert int(count) <= 5  # header, init, sh, ps, wc: no host processes


def test_pid_namespace_forwards_signals(user, bb):
    proc = popen(user, "start", "--pid", "bb", "sh", "-c", "trap 'exit 9' TERM; echo ready; while :; do sleep 1; done")
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 9
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_pid_namespace_untrapped_sigterm_ends_the_command(user, bb):
    proc = popen(user, "start", "--pid", "bb", "sh", "-c", "echo ready; exec sleep 600")
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_net_namespace(user, bb):
    result = user.pyenroot("start", "--net", "bb", "sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/operstate")
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    assert names[0] == "lo" and len(names) == 2
    assert names[1] in ("unknown", "up")
    assert user.pyenroot("start", "bb", "ls", "/sys/class/net", env={"ENROOT_UNSHARE_NET": "y"}).stdout.split() == [
        "lo"]


def test_uts_namespace(user, bb):
    result = user.pyenroot("start", "--root", "--uts", "bb", "sh", "-c", "hostname inside-box && hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "inside-box"
    assert os.uname().nodename != "inside-box"


def test_ipc_namespace(user, bb):
    host = user.run(["readlink", "/proc/self/ns/ipc"]).stdout.strip()
    inside = user.pyenroot("start", "--ipc", "bb", "readlink", "/proc/self/ns/ipc").stdout.strip()
    assert inside and inside != host
    same = user.pyenroot("start", "bb", "readlink", "/proc/self/ns/ipc").stdout.strip()
    assert same == host


def documented_restricted_dev() -> set[str]:
    """The names docs/runtime.md says a restricted /dev holds (without a terminal on stdin)."""
    text = " ".join((REPO / "docs/runtime.md").read_text().split())
    listing = text.split("is a fresh tmpfs that holds exactly:", 1)[1].split(" When ", 1)[0]
    return set(re.findall(r"`([a-z]+)`", listing))


def test_restrict_dev(user, bb):
    result = user.pyenroot("start", "bb", "ls", "/dev", env={"ENROOT_RESTRICT_DEV": "y"})
    assert result.returncode == 0, result.stderr
    names = set(result.stdout.split())
    assert names == documented_restricted_dev()
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "fd", "stdin"} <= names
    assert "fuse" not in names
    assert "fuse" in user.pyenroot("start", "bb", "ls", "/dev").stdout.split()
    echo = user.pyenroot("start", "bb", "sh", "-c", "echo ok > /dev/null && echo fine",
                         env={"ENROOT_RESTRICT_DEV": "y"})
    assert echo.stdout.strip() == "fine"


def test_mount_home(user, bb):
    put_file(user, user.home / "marker.txt", "home file\n")
    result = user.pyenroot("start", "bb", "sh", "-c", 'echo "$HOME"; cat "$HOME/marker.txt"',
                           env={"ENROOT_MOUNT_HOME": "y"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(user.home), "home file"]
    rooted = user.pyenroot("start", "--root", "bb", "cat", "/root/marker.txt", env={"ENROOT_MOUNT_HOME": "y"})
    assert rooted.stdout == "home file\n"
    assert user.pyenroot("start", "bb", "test", "-e", f"{user.home}/marker.txt").returncode != 0


def test_shadow_puts_the_caller_in_passwd(user, bb):
    result = user.pyenroot("start", "bb", "sh", "-c", "id -un; grep -c '^root:' /etc/passwd")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [user.name, "1"]


def test_shadow_puts_the_caller_in_an_existing_shadow_file(user, bb):
    put_file(user, bb / "etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640)
    script = 'grep -c "^$(id -un):" /etc/shadow; grep -c "^root:" /etc/shadow'
    for _ in range(2):  # a second start adds nothing
        result = user.pyenroot("start", "bb", "sh", "-c", script)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["1", "1"]
    assert user.pyenroot("start", "bb", "test", "-e", "/etc/shadow").returncode == 0
    assert stat.S_IMODE((bb / "etc/shadow").stat().st_mode) == 0o640


def test_system_mounts(user, bb):
    result = user.pyenroot("start", "bb", "sh", "-c",
                           "test -d /proc/self && test -d /sys/class && test -c /dev/null && "
                           "touch /tmp/scratch && cat /etc/hosts >/dev/null && echo ok; "
                           "touch /sys/x 2>/dev/null || echo ro")
    assert result.stdout.split() == ["ok", "ro"], result.stderr


def test_lock_file_and_list(user, bb):
    proc = popen(user, "start", "bb", "sh", "-c", "echo ready; read line")
    try:
        assert proc.stdout.readline() == "ready\n"
        assert (bb / ".lock").exists()
        listing = user.pyenroot("list", "--fancy")
        assert any(line.split()[:2] == ["bb", str(proc.pid)] for line in listing.stdout.splitlines()), listing.stdout
    finally:
        proc.stdin.write("x\n")
        proc.stdin.flush()
        proc.wait()


def test_bad_options(user, bb):
    bad_env = user.pyenroot("start", "-e", "1X=y", "bb", "true")
    assert bad_env.returncode == 2 and "invalid environment variable" in bad_env.stderr
    bad_mount = user.pyenroot("start", "-m", "/a b", "bb", "true")
    assert bad_mount.returncode != 0
    missing_rc = user.pyenroot("start", "--rc", "/no/such/rc", "bb", "true")
    assert missing_rc.returncode != 0 and "rc script" in missing_rc.stderr


def test_data_dir_is_private_and_untouched_by_start(user, bb):
    # A start creates only the lock file in the root filesystem.
    before = {p.name for p in bb.iterdir()}
    assert user.pyenroot("start", "bb", "true").returncode == 0
    after = {p.name for p in bb.iterdir()}
    assert after - before <= {".lock"}
    assert stat.S_ISDIR(bb.stat().st_mode)


def test_localtime_follows_the_host(user, bb):
    host = Path("/etc/localtime")
    if not host.is_symlink():
        pytest.skip("the host's /etc/localtime is not a link to a zone file")
    for _ in range(2):  # a second start must not disturb what the first set up
        result = user.pyenroot("start", "bb", "sh", "-c", "readlink /etc/localtime; cat /etc/localtime | wc -c")
        assert result.returncode == 0, result.stderr
        link, size = result.stdout.split()
        assert link == os.readlink(host)
        assert int(size) == host.stat().st_size


def test_inherited_descriptors_are_closed(user, bb):
    read_end, write_end = os.pipe()
    try:
        result = subprocess.run([str(user.wrapper), "start", "bb", "sh", "-c", f"test -e /proc/self/fd/{write_end} "
                                 "&& echo leaked || echo closed"], env=user.env(), cwd=str(user.home),
                                user=user.uid, group=user.gid, extra_groups=[], pass_fds=(write_end,),
                                capture_output=True, text=True)
        assert result.stdout.strip() == "closed", result.stderr
    finally:
        os.close(read_end)
        os.close(write_end)


def _block_and_ignore() -> None:
    """What a caller like slurmstepd may hand down: blocked signals and an ignored SIGTERM."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGUSR1])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def test_program_gets_a_clean_signal_state(user, bb):
    result = subprocess.run([str(user.wrapper), "start", "bb", "grep", "-E", "SigBlk|SigIgn", "/proc/self/status"],
                            env=user.env(), cwd=str(user.home), user=user.uid, group=user.gid, extra_groups=[],
                            preexec_fn=_block_and_ignore, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":\t") for line in result.stdout.splitlines())
    assert int(fields["SigBlk"], 16) == 0
    assert not int(fields["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1))  # Python's own SIG_IGN is not passed on
