"""The order a start's steps reach the kernel in, checked through the recording syscalls fake (no kernel):
what security depends on is that hooks run with the namespace's capabilities before the root becomes
read-only, and that pivot_root, no_new_privs and the seccomp filter come before the program."""

import errno
import inspect
import os

import pytest

from pyenroot.commands import doctor
from pyenroot.errors import RuntimeStartError
from pyenroot.runtime import launcher, seccomp
from pyenroot.runtime.flags import (
    CLONE_NEWCGROUP,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUSER,
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SLAVE,
)
from pyenroot.runtime.hooks import HookStep
from pyenroot.runtime.plan import StartRequest
from pyenroot.runtime.syscalls import LinuxSyscalls, Syscalls
from tests.helpers.fake_syscalls import Executed, RecordingSyscalls

MOUNTS_D = ("/host/early /early none bind,x-create=dir 0 -1\n"
            "/host/late /late none bind,x-create=dir 0 0\n")


def _spec(tmp_path, hook_steps=(), **request):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    fields = dict(command=("true",), outer_uid=1001, outer_gid=1002, mount_files=(("test.fstab", MOUNTS_D),))
    fields.update(request)
    return launcher.Launch(target=launcher.Target("dir", root), request=StartRequest(**fields),
                           runtime_path=tmp_path / "run", host_environ={}, hook_steps=list(hook_steps))


def _start(spec, kernel) -> Executed:
    with pytest.raises(Executed) as executed:
        launcher.launch(spec, kernel)
    return executed.value


def _index(calls, wanted) -> int:
    """Position of the first recorded call for which `wanted(call)` holds."""
    return next(i for i, call in enumerate(calls) if wanted(call))


def _mount_of(target):
    return lambda call: call[0] == "mount" and call[2].endswith(target)


def _remount(call) -> bool:
    return call[0] == "mount" and call[1] is None and call[4] & MS_REMOUNT and call[2].endswith("/rootfs")


def test_the_order_security_depends_on(tmp_path):
    kernel = RecordingSyscalls()
    hook = HookStep("50-test", target="tests.helpers.fake_syscalls:mounting_hook")
    cwd = os.getcwd()
    executed = _start(_spec(tmp_path, [hook]), kernel)
    assert os.getcwd() == cwd  # the fake's chdir and chroot moved nothing
    calls, root = kernel.calls, str(tmp_path / "rootfs")
    assert calls[0] == ("enter_user_namespace", CLONE_NEWUSER | CLONE_NEWNS, "1001 1001 1", "1002 1002 1")
    assert calls[1] == ("mount", None, "/", None, MS_REC | MS_SLAVE, None)
    order = [
        _index(calls, lambda c: c == ("mount", root, root, None, MS_BIND | MS_REC, None)),  # bind the root
        _index(calls, _mount_of("/early")),  # pass -1, before the hooks
        _index(calls, _mount_of("/now")),  # the hook's mount at once
        _index(calls, _mount_of("/after")),  # the hook's mount for after the hooks
        _index(calls, _mount_of("/late")),  # pass 0
        _index(calls, _remount),  # read-only
        _index(calls, lambda c: c[0] == "pivot_root"),
        _index(calls, lambda c: c == ("unshare", CLONE_NEWCGROUP)),
        _index(calls, lambda c: c[0] == "set_no_new_privs"),
        _index(calls, lambda c: c[0] == "load_seccomp_filter"),
        _index(calls, lambda c: c[0] == "close_fds_except"),
        _index(calls, lambda c: c[0] == "execvpe"),
    ]
    assert order == sorted(order)
    assert executed.argv == ["true"]
    assert calls[-1] == ("execvpe", "true", ["true"])


def test_the_root_is_read_only_nosuid_nodev_and_keeps_locked_flags(tmp_path):
    kernel = RecordingSyscalls(mount_flags=MS_NOEXEC)  # a flag the kernel locked on the host's mount
    _start(_spec(tmp_path), kernel)
    flags = kernel.calls[_index(kernel.calls, _remount)][4]
    assert flags == MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY


def test_a_writable_root_is_remounted_without_read_only(tmp_path):
    kernel = RecordingSyscalls(mount_flags=MS_RDONLY)
    _start(_spec(tmp_path, writable=True), kernel)
    assert not kernel.calls[_index(kernel.calls, _remount)][4] & MS_RDONLY


def test_pivot_root_then_the_old_root_is_cut_loose(tmp_path):
    kernel = RecordingSyscalls()
    _start(_spec(tmp_path, login=False), kernel)
    first = _index(kernel.calls, lambda c: c[0] == "pivot_root")
    assert kernel.calls[first - 1:first + 5] == [
        ("chdir", str(tmp_path / "rootfs")), ("pivot_root", ".", "."),
        ("mount", None, ".", None, MS_SLAVE | MS_REC, None), ("umount2", ".", MNT_DETACH), ("chroot", "."),
        ("chdir", "/")]


def test_executable_hooks_keep_the_capabilities(tmp_path):
    script = tmp_path / "60-mount.sh"
    script.write_text('#!/bin/sh\necho "/host/ext /ext none bind,x-create=dir 0 0" >> "$ENROOT_MOUNTS"\n')
    script.chmod(0o755)
    kernel = RecordingSyscalls(child_log=tmp_path / "child.log")
    _start(_spec(tmp_path, [HookStep("60-mount.sh", path=script)]), kernel)
    assert (tmp_path / "child.log").read_text().split() == ["keep_capabilities_across_exec"]
    runtime = _index(kernel.calls, lambda c: c[0] == "mount" and c[3] == "tmpfs")  # the hooks' files
    assert runtime < _index(kernel.calls, _mount_of("/ext")) < _index(kernel.calls, _remount)


def test_the_superuser_start_has_no_user_namespace_and_no_filter(tmp_path):
    kernel = RecordingSyscalls()
    _start(_spec(tmp_path, outer_uid=0, outer_gid=0, userns=False), kernel)
    assert kernel.calls[0] == ("unshare", CLONE_NEWNS)
    assert "enter_user_namespace" not in kernel.names() and "load_seccomp_filter" not in kernel.names()
    assert "set_no_new_privs" in kernel.names()


def test_a_new_network_namespace_gets_its_loopback_up(tmp_path):
    kernel = RecordingSyscalls()
    _start(_spec(tmp_path, unshare_net=True), kernel)
    assert kernel.calls[0][1] & CLONE_NEWNET and kernel.calls[1] == ("bring_loopback_up",)


def test_a_refused_user_namespace_stops_before_anything_else(tmp_path):
    kernel = RecordingSyscalls(fail={"enter_user_namespace": errno.EPERM})
    with pytest.raises(RuntimeStartError, match="cannot create the container's namespaces") as error:
        launcher.launch(_spec(tmp_path), kernel)
    assert "unprivileged_userns_clone" in error.value.hint
    assert kernel.names() == ["enter_user_namespace"]


def test_a_failed_pivot_root_never_reaches_the_program(tmp_path):
    kernel = RecordingSyscalls(fail={"pivot_root": errno.EINVAL})
    with pytest.raises(RuntimeStartError, match="cannot switch to the container's root"):
        launcher.launch(_spec(tmp_path), kernel)
    assert not {"set_no_new_privs", "load_seccomp_filter", "execvpe", "execve"} & set(kernel.names())


def test_seccomp_install_goes_through_the_seam():
    kernel = RecordingSyscalls()
    seccomp.install(kernel, machine="aarch64")
    assert kernel.calls == [("load_seccomp_filter", seccomp.filter_program("aarch64"))]


def test_doctor_probe_goes_through_the_seam():
    rows, works = doctor.user_namespace_rows(RecordingSyscalls())
    assert works and rows[0][1] == "ok"
    rows, works = doctor.user_namespace_rows(RecordingSyscalls(fail={"enter_user_namespace": errno.EPERM}))
    assert not works and "Operation not permitted" in rows[0][2]


def _methods(cls) -> set[str]:
    return {name for name, value in vars(cls).items() if inspect.isfunction(value) and not name.startswith("_")}


def test_both_implementations_cover_the_whole_seam():
    assert _methods(Syscalls) == _methods(LinuxSyscalls) == _methods(RecordingSyscalls) - {"names"}
