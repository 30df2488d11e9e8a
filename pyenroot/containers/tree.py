"""Removing a directory tree that an image filled: missing owner bits, symbolic links and mount points."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pyenroot.errors import StorageError


def remove_tree(path: Path) -> None:
    """Delete a directory tree like `rm -rf --one-file-system`, even where write or search bits are missing.

    Works on directory descriptors and never follows symbolic links; a mount point inside stops the removal.
    """
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    ensure_owner_rwx(str(path), st)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        mounts = _purge(fd, st.st_dev, str(path))
    finally:
        os.close(fd)
    if mounts:
        raise StorageError(f"cannot remove {path}: a file system is mounted at {mounts[0]}",
                           hint="unmount it (or stop the container using it) and try again")
    os.rmdir(path)


def ensure_owner_rwx(path: str, st: os.stat_result, dir_fd: int | None = None) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IRWXU != stat.S_IRWXU:
        os.chmod(path, mode | stat.S_IRWXU, dir_fd=dir_fd)


def _purge(dir_fd: int, device: int, where: str) -> list[str]:
    """Empty the directory open at `dir_fd`; returns mount points found (left in place)."""
    mounts: list[str] = []
    for name in os.listdir(dir_fd):
        st = os.lstat(name, dir_fd=dir_fd)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            continue
        child_path = f"{where}/{name}"
        if st.st_dev != device:
            mounts.append(child_path)
            continue
        ensure_owner_rwx(name, st, dir_fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if os.fstat(child).st_ino != st.st_ino:  # swapped between lstat and open: leave it
                mounts.append(child_path)
                continue
            inner = _purge(child, device, child_path)
        finally:
            os.close(child)
        if inner:
            mounts.extend(inner)
        else:
            os.rmdir(name, dir_fd=dir_fd)
    return mounts
