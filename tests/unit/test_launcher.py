"""The launcher's checks before it enters namespaces (no namespaces are entered here)."""

import errno
import threading

import pytest

from pyenroot.errors import RuntimeStartError
from pyenroot.runtime import launcher
from pyenroot.runtime.flags import CLONE_NEWNS, CLONE_NEWUSER


def test_waits_for_threads_an_import_left_behind():
    release = threading.Event()
    helper = threading.Thread(target=release.wait, name="read-ahead", daemon=True)
    helper.start()
    threading.Timer(0.05, release.set).start()
    launcher._wait_single_threaded()
    assert threading.active_count() == 1
    assert launcher._thread_count() == 1


def test_a_thread_that_stays_is_named(monkeypatch):
    monkeypatch.setattr(launcher, "THREAD_EXIT_LIMIT_S", 0.05)
    release = threading.Event()
    helper = threading.Thread(target=release.wait, name="stuck-helper", daemon=True)
    helper.start()
    try:
        with pytest.raises(RuntimeStartError, match=r"1 other thread.*stuck-helper"):
            launcher._wait_single_threaded()
    finally:
        release.set()
        helper.join()


def test_sysctl_hint_only_for_the_errors_that_mean_it():
    flags = CLONE_NEWUSER | CLONE_NEWNS
    assert "max_user_namespaces" in launcher._unshare_hint(flags, errno.ENOSPC)
    assert "unprivileged_userns_clone" in launcher._unshare_hint(flags, errno.EPERM)
    assert launcher._unshare_hint(flags, errno.EINVAL) is None  # a second thread, or a chroot
    assert launcher._unshare_hint(CLONE_NEWNS, errno.EPERM) is None  # no user namespace asked for
