"""The process runner: every tool gets the parent-death signal, with and without other threads alive."""

from __future__ import annotations

import sys
import threading

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
