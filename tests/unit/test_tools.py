"""The process runner: every tool gets the parent-death signal, with and without other threads alive."""

from __future__ import annotations

import ast
import errno
import os
import sys
import threading
from pathlib import Path

import pytest

from pyenroot import tools
from pyenroot.errors import ImageError

# Prints the child's PR_GET_PDEATHSIG (2) and its soft limit of open files.
_REPORT = ("import ctypes,resource; v=ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0); "
           "print(v.value, resource.getrlimit(resource.RLIMIT_NOFILE)[0])")


def _report(many_files: bool = False) -> tuple[int, int]:
    done = tools.run([sys.executable, "-c", _REPORT], many_files=many_files)
    signal_number, soft = done.stdout.split()
    return int(signal_number), int(soft)


def _with_a_thread_alive(function):
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        return function()
    finally:
        stop.set()
        thread.join()


def test_a_tool_dies_with_us_in_a_one_thread_process():
    assert _report()[0] == 9


def test_a_tool_dies_with_us_while_other_threads_run():
    assert _with_a_thread_alive(_report)[0] == 9


def test_only_image_tools_get_more_open_files():
    plain, more = _report()[1], _report(many_files=True)[1]
    assert more >= plain
    assert _with_a_thread_alive(lambda: _report(many_files=True))[1] == more


@pytest.mark.parametrize("threaded", [False, True])
def test_a_missing_tool_is_named(threaded):
    def start():
        return tools.run(["pyenroot-no-such-tool", "x"], hint="install it")

    with pytest.raises(ImageError) as info:
        _with_a_thread_alive(start) if threaded else start()
    assert info.value.message == "pyenroot-no-such-tool is not installed"
    assert info.value.hint == "install it"


def test_child_setup_needs_one_thread():
    with pytest.raises(RuntimeError):
        _with_a_thread_alive(lambda: tools.run(["true"], child_setup=lambda: None))


def test_a_timeout_is_an_os_error():
    with pytest.raises(OSError):
        tools.run(["sleep", "5"], timeout=0.2)


def _served(argv: list[str], child_setup=None) -> tuple[int, str]:
    """Start a server, read what it writes to its stderr until it exits: (exit code, text)."""
    read_end, write_end = os.pipe()
    try:
        pid = tools.start_server(argv, stderr=write_end, child_setup=child_setup)
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


def test_a_server_dies_with_us_in_a_session_of_its_own_reading_nothing():
    code = ("import ctypes,os,sys; v=ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0); "
            "print(v.value, os.getsid(0) == os.getpid(), sys.stdin.read() == '', file=sys.stderr)")
    assert _served([sys.executable, "-c", code]) == (0, "9 True True\n")


def test_a_server_that_cannot_start_says_why_on_its_stderr():
    def refuse() -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    assert _served(["/nonexistent/server"]) == (127, f"/nonexistent/server: {tools.NO_SUCH_FILE}\n")
    assert _served(["true"], child_setup=refuse) == (127, f"true: {os.strerror(errno.EPERM)}\n")


def test_a_server_needs_one_thread():
    with pytest.raises(RuntimeError):
        _with_a_thread_alive(lambda: tools.start_server(["true"], stderr=2))


def test_the_runner_imports_nothing_above_it():
    """tools.py is a leaf: what a tool's output means (progress counts) is its caller's business."""
    tree = ast.parse(Path(tools.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {name for name in imported if name and name.startswith("pyenroot")} <= {"pyenroot.errors"}
