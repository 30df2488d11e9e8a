"""The only place pyenroot calls the kernel's namespace, mount, capability and prctl system calls (ctypes).

`Syscalls` is the seam a start's steps go through (launcher.py, mounter.py, seccomp.py, doctor's probe):
`LinuxSyscalls` makes the calls, and the unit tests' `RecordingSyscalls` (tests/helpers/fake_syscalls.py)
records them, so that the order security depends on is checked without a kernel. The module functions are
the plain calls for the rest of the runtime (attach, imagemount) and for tools that die with their parent.
Python 3.11 has no os.unshare/os.setns.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import struct

from pyenroot.runtime.flags import (
    MOVE_MOUNT_F_EMPTY_PATH,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_RELATIME,
    OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE,
    PR_SET_NAME,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
)

# The C library this interpreter already runs with: find_library() would spawn ldconfig on every start, and
# it keeps working after pivot_root, when the host's files are gone.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203}.get(os.uname().machine, 155)
# The mount API calls have the same numbers on every architecture.
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT = 428, 429
_AT_FDCWD = -100
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAPBSET_READ = 23
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_ST_TO_MS = ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
             (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
             (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _bytes(value: str | os.PathLike | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str | os.PathLike, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    result = _libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data))
    _check(result, f"mount {target}")


def umount2(target: str | os.PathLike, flags: int = 0) -> None:
    _check(_libc.umount2(_bytes(target), flags), f"umount {target}")


def pivot_root(new_root: str | os.PathLike, put_old: str | os.PathLike) -> None:
    result = _libc.syscall(_SYS_PIVOT_ROOT, _bytes(new_root), _bytes(put_old))
    _check(int(result), "pivot_root")


def set_no_new_privs() -> None:
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


def set_parent_death_signal(signal_number: int) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal_number, 0, 0, 0), "prctl(PDEATHSIG)")


def set_process_name(name: str) -> None:
    """The name /proc/PID/comm shows (at most 15 bytes)."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(PR_SET_NAME, ctypes.cast(buffer, ctypes.c_void_p).value or 0, 0, 0, 0), "prctl(PR_SET_NAME)")


def clone_mount(path: str | os.PathLike) -> int:
    """A detached copy of the mount at `path` (open_tree with OPEN_TREE_CLONE): a descriptor to attach elsewhere."""
    fd = _libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, _bytes(path), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {path}: {os.strerror(err)}")
    return int(fd)


def attach_mount(fd: int, target: str | os.PathLike) -> None:
    """Attach the detached mount `fd` at `target` (move_mount)."""
    result = _libc.syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, _bytes(target), MOVE_MOUNT_F_EMPTY_PATH)
    _check(int(result), f"move_mount {target}")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_seccomp_filter(program: bytes) -> None:
    """Load a classic BPF program (seccomp.filter_program) as this process's seccomp filter (needs
    no_new_privs or CAP_SYS_ADMIN; inherited across exec)."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: {os.strerror(err)}")


def keep_capabilities_across_exec() -> None:
    """Raise every permitted capability into the ambient set, so that a non-root uid keeps its namespace
    capabilities in the program it executes next (hooks that mount things need them)."""
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)  # this process
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words
    if _libc.capget(header, data) != 0:
        return
    data[2], data[5] = data[1], data[4]  # inheritable := permitted
    if _libc.capset(header, data) != 0:
        return
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) < 0:
            break
        word, bit = divmod(cap, 32)
        if data[1 + 3 * word] & (1 << bit):
            _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)


def _write(path: str, text: str) -> None:
    """One write to a /proc file, without Python's file objects: it also runs in the child of a fork before exec
    (a FUSE server's id maps), where every page of the parent that Python touches is copied."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class Syscalls:
    """What a start asks of the kernel, one method a step. The methods here do nothing: `LinuxSyscalls`
    makes the calls, a test's fake records them."""

    def unshare(self, flags: int) -> None: ...

    def enter_user_namespace(self, flags: int, uid_map: str, gid_map: str) -> None:
        """unshare(flags), which include CLONE_NEWUSER, then deny setgroups and write the id maps."""

    def bring_loopback_up(self) -> None:
        """`lo` up in a new network namespace."""

    def mount(self, source: str | None, target: str | os.PathLike, fstype: str | None = None, flags: int = 0,
              data: str | None = None) -> None: ...

    def umount2(self, target: str | os.PathLike, flags: int = 0) -> None: ...

    def mount_flags(self, path: str | os.PathLike) -> int:
        """The MS_* flags (read-only, nosuid, ...) the mount at `path` has now."""
        return 0

    def pivot_root(self, new_root: str | os.PathLike, put_old: str | os.PathLike) -> None: ...

    def chdir(self, path: str | os.PathLike) -> None: ...

    def chroot(self, path: str | os.PathLike) -> None: ...

    def set_no_new_privs(self) -> None: ...

    def set_parent_death_signal(self, signal_number: int) -> None: ...

    def set_process_name(self, name: str) -> None: ...

    def load_seccomp_filter(self, program: bytes) -> None: ...

    def keep_capabilities_across_exec(self) -> None:
        """In a child before it executes a hook: keep the namespace's capabilities across exec."""

    def close_fds_except(self, keep: int) -> None:
        """Close every descriptor above stderr but `keep`."""

    def reset_signals(self) -> None:
        """Default dispositions for the signals Python ignores, and no signal blocked."""

    def execve(self, path: str, argv: list[str], env: dict[str, str]) -> None: ...

    def execvpe(self, file: str, argv: list[str], env: dict[str, str]) -> None:
        """Execute `file`, looked up in env's PATH."""


class LinuxSyscalls(Syscalls):
    """The kernel's calls (ctypes and os)."""

    def unshare(self, flags: int) -> None:
        unshare(flags)

    def enter_user_namespace(self, flags: int, uid_map: str, gid_map: str) -> None:
        unshare(flags)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", uid_map)
        _write("/proc/self/gid_map", gid_map)

    def bring_loopback_up(self) -> None:
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sh", b"lo", 0)
            flags = struct.unpack("16sh", fcntl.ioctl(sock, _SIOCGIFFLAGS, request)[:18])[1]
            fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))

    def mount(self, source: str | None, target: str | os.PathLike, fstype: str | None = None, flags: int = 0,
              data: str | None = None) -> None:
        mount(source, target, fstype, flags, data)

    def umount2(self, target: str | os.PathLike, flags: int = 0) -> None:
        umount2(target, flags)

    def mount_flags(self, path: str | os.PathLike) -> int:
        found = os.statvfs(path).f_flag
        return sum(ms for st, ms in _ST_TO_MS if found & st)

    def pivot_root(self, new_root: str | os.PathLike, put_old: str | os.PathLike) -> None:
        pivot_root(new_root, put_old)

    def chdir(self, path: str | os.PathLike) -> None:
        os.chdir(path)

    def chroot(self, path: str | os.PathLike) -> None:
        os.chroot(path)

    def set_no_new_privs(self) -> None:
        set_no_new_privs()

    def set_parent_death_signal(self, signal_number: int) -> None:
        set_parent_death_signal(signal_number)

    def set_process_name(self, name: str) -> None:
        set_process_name(name)

    def load_seccomp_filter(self, program: bytes) -> None:
        load_seccomp_filter(program)

    def keep_capabilities_across_exec(self) -> None:
        keep_capabilities_across_exec()

    def close_fds_except(self, keep: int) -> None:
        try:
            fds = [int(name) for name in os.listdir("/proc/self/fd")]
        except OSError:
            fds = list(range(3, 1024))
        for fd in fds:
            if fd > 2 and fd != keep:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def reset_signals(self) -> None:
        # Python ignores SIGPIPE and SIGXFSZ (ignored signals stay ignored across exec), and a caller such as
        # slurmstepd may have left signals blocked.
        for number in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])

    def execve(self, path: str, argv: list[str], env: dict[str, str]) -> None:
        os.execve(path, argv, env)

    def execvpe(self, file: str, argv: list[str], env: dict[str, str]) -> None:
        os.execvpe(file, argv, env)
