"""`pyenroot exec` into a running container, as the unprivileged user."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# The container's own process: a tmpfs on /tmp holding a file, an environment of its own, cwd /root.
CONTAINER_INIT = ("mount -t tmpfs none /tmp && echo inside-mount > /tmp/seen && cd /root && echo ready && "
                  "exec sleep 3600")


@contextlib.contextmanager
def running_container(user, name: str, *, pid_ns: bool = False) -> Iterator[int]:
    """Run container `name` (created beforehand) by hand, as `start` would: a user and mount namespace,
    the container directory bind-mounted and pivoted into. Yields the PID of its process on the host."""
    root = user.home / ".local/share/enroot" / name
    proc_mount = f"mount -t proc proc {root}/proc && " if pid_ns else ""
    setup = (f"mount --bind {root} {root} && mount --rbind /dev {root}/dev && {proc_mount}cd {root} && "
             "pivot_root . . && umount -l . && cd / && "
             f"exec env -i PATH=/usr/bin:/bin CONTAINER_VAR=from-container /bin/sh -c '{CONTAINER_INIT}'")
    argv = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
    if pid_ns:
        argv += ["--pid", "--fork"]
    process = subprocess.Popen([*argv, "sh", "-c", setup], env=user.env(), user=user.uid, group=user.gid,
                               extra_groups=[], cwd=str(user.home), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if line.strip() != "ready":
            pytest.fail(f"hand-made container did not start: {line!r} {process.stderr.read()!r}")
        pid = process.pid
        if pid_ns:  # unshare --fork: the container is unshare's child
            pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


@pytest.fixture
def container(user, busybox_sqsh) -> str:
    result = user.pyenroot("create", "-n", "box", str(busybox_sqsh))
    assert result.returncode == 0, result.stderr
    return "box"


def test_exec_sees_mounts_environment_and_cwd(user, container):
    with running_container(user, container) as pid:
        result = user.pyenroot("exec", "-e", "EXTRA=1", "-e", "CONTAINER_VAR=overridden", "-e", "HOME", str(pid),
                               "sh", "-c", 'cat /tmp/seen; pwd; echo "$EXTRA $CONTAINER_VAR $HOME"; '
                                           'test -e /etc/os-release && grep -c busybox /etc/os-release')
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "inside-mount"  # a mount made inside the container, invisible on the host
        assert lines[1] == "/root"
        assert lines[2] == f"1 overridden {user.home}"
        assert not (user.home / "tmp/seen").exists()

        env = user.pyenroot("exec", str(pid), "env")
        assert "CONTAINER_VAR=from-container" in env.stdout.splitlines()
        assert f"HOME={user.home}" not in env.stdout.splitlines()  # the host environment stays out


def test_exec_exit_codes_and_errors(user, container):
    with running_container(user, container) as pid:
        assert user.pyenroot("exec", str(pid), "sh", "-c", "exit 7").returncode == 7
        assert user.pyenroot("exec", str(pid), "sh", "-c", "kill -TERM $$").returncode == 128 + signal.SIGTERM
        missing = user.pyenroot("exec", str(pid), "no-such-command")
        assert missing.returncode == 127
        assert missing.stderr.startswith("pyenroot: error: cannot run no-such-command")
        no_command = user.pyenroot("exec", str(pid))
        assert no_command.returncode == 2 and "missing command" in no_command.stderr
        stdin = user.pyenroot("exec", str(pid), "cat", input="through stdin\n")
        assert stdin.stdout == "through stdin\n"

    bad = user.pyenroot("exec", "notapid", "true")
    assert bad.returncode == 2 and "invalid PID" in bad.stderr
    gone = user.pyenroot("exec", "999999999", "true")
    assert gone.returncode == 1 and "no such process" in gone.stderr


def test_exec_refuses_foreign_process(user):
    result = user.pyenroot("exec", "1", "true")
    assert result.returncode == 1
    assert "permission denied" in result.stderr and "Traceback" not in result.stderr


def test_exec_joins_pid_namespace(user, container):
    with running_container(user, container, pid_ns=True) as pid:
        result = user.pyenroot("exec", str(pid), "sh", "-c", "readlink /proc/self/ns/pid; cat /proc/1/cmdline")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == os.readlink(f"/proc/{pid}/ns/pid")
        assert lines[1].startswith("sleep")  # PID 1 of the container's namespace is its own process
        listed = json.loads(user.pyenroot("list", "--json").stdout)
        assert listed[0]["processes"][0]["pid"] == pid


def test_exec_forwards_signals(user, container):
    with running_container(user, container) as pid:
        process = subprocess.Popen(
            # A loop of short foreground sleeps, not `wait`: busybox ash can miss a trapped signal that arrives
            # just as `wait` starts blocking, and then waits for its child (seen once in CI under load).
            [str(user.wrapper), "exec", str(pid), "sh", "-c",
             'trap "echo got-term; exit 5" TERM; echo ready; while :; do sleep 1; done'],
            env=user.env(), user=user.uid, group=user.gid, extra_groups=[], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            assert process.stdout.readline().strip() == "ready"
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
        assert out.strip() == "got-term", err
        assert process.returncode == 5


@contextlib.contextmanager
def started_container(user, name: str, *options: str) -> Iterator[int]:
    """`pyenroot start OPTIONS NAME` in the background; yields the PID that `list` reports for it."""
    process = subprocess.Popen([str(user.wrapper), "start", *options, name, "sh", "-c", "echo ready; exec sleep 3600"],
                               env=user.env(), user=user.uid, group=user.gid, extra_groups=[], cwd=str(user.home),
                               start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if line.strip() != "ready":
            pytest.fail(f"start failed: {line!r} {process.stderr.read()!r}")
        entries = json.loads(user.pyenroot("list", "--json").stdout)
        pids = [p["pid"] for e in entries if e["name"] == name for p in e["processes"]]
        assert len(pids) == 1, entries
        yield pids[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


@pytest.mark.parametrize("options", [(), ("--pid", "--root")], ids=["plain", "pid-root"])
def test_exec_into_started_container(user, container, options):
    with started_container(user, container, "-e", "STARTED_VAR=yes", *options) as pid:
        result = user.pyenroot("exec", str(pid), "sh", "-c",
                               'echo "$STARTED_VAR"; id -u; readlink /proc/self/ns/mnt; grep -c " /proc " /proc/mounts')
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "yes"
        assert lines[1] == ("0" if "--root" in options else str(user.uid))
        assert lines[2] == os.readlink(f"/proc/{pid}/ns/mnt")
        assert int(lines[3]) >= 1  # the container's own /proc mount
        refused = user.pyenroot("remove", container)
        assert refused.returncode == 1 and "is running" in refused.stderr
