"""Processes in tests: run pyenroot until one of its tools has done its work, then stop it there."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKE_TOOL_BLOCKS = """#!/bin/sh
# Runs the real tool, then reports and blocks: the test signals pyenroot at that point.
case " $* " in *" -s "*) exec /usr/bin/$(basename "$0") "$@";; esac
/usr/bin/$(basename "$0") "$@" || exit $?
echo $$ > "$DONE_MARKER.tmp" && mv "$DONE_MARKER.tmp" "$DONE_MARKER"
exec sleep 3600
"""


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    for _ in range(6000):  # a generous bound, not a timing assertion
        if path.exists():
            return
        if process.poll() is not None:
            pytest.fail(f"pyenroot ended early: {process.communicate()}")
        time.sleep(0.05)
    pytest.fail("the tool never finished")


@contextlib.contextmanager
def blocked_after(user, tool: str, args: list[str], extra_env: dict[str, str] | None = None
                  ) -> Iterator[subprocess.Popen]:
    """`pyenroot ARGS` with `tool` replaced by one that does its work and then blocks; yields at that point.
    Whatever is still running at the end is killed with its process group."""
    bindir = user.make_dir("fakebin")
    fake = bindir / tool
    fake.write_text(FAKE_TOOL_BLOCKS)
    fake.chmod(0o755)
    marker = user.home / "tmp" / "tool-done"
    env = user.env(PATH=f"{bindir}:{user.env()['PATH']}", DONE_MARKER=str(marker), **(extra_env or {}))
    process = subprocess.Popen([str(user.wrapper), *args], env=env, user=user.uid, group=user.gid, extra_groups=[],
                               cwd=str(user.home), start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(marker, process)
        process.tool_pid = int(marker.read_text())  # type: ignore[attr-defined]
        marker.unlink()
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the fake tool too, whatever happened to pyenroot
        process.communicate()


def wait_gone(pid: int) -> None:
    """Wait (boundedly) until a process has exited; a zombie counts as gone."""
    for _ in range(6000):  # a generous bound, not a timing assertion
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)


@contextlib.contextmanager
def stopped_anchor(process: subprocess.Popen) -> Iterator[int]:
    """For a `start ... sh -c 'kill -STOP $$; exit 0'` (the Slurm anchor pattern): wait until the container's
    process has stopped itself, yield its PID, then let it finish and check it exited 0."""
    reaped = False
    try:
        _, status = os.waitpid(process.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        yield process.pid
        os.kill(process.pid, signal.SIGCONT)
        _, status = os.waitpid(process.pid, 0)
        reaped = True
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        if not reaped:
            os.kill(process.pid, signal.SIGKILL)
            os.waitpid(process.pid, 0)
        process.returncode = 0  # reaped here: keep Popen from waiting for it again
