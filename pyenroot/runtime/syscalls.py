"""The only place pyenroot calls the kernel's namespace and mount system calls (through ctypes).

Python 3.11 has no os.unshare/os.setns; everything above this module plans with plain data and can be
tested without a kernel.
"""

from __future__ import annotations

import ctypes
import os

from pyenroot.runtime.flags import (
    MOVE_MOUNT_F_EMPTY_PATH,
    OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE,
    PR_SET_NAME,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
)

# The C library this interpreter already runs with: find_library() would spawn ldconfig on every start.
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

