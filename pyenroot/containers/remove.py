"""Removing a container: it leaves `list` at once (renamed to a hidden work entry), then its files go."""

from __future__ import annotations

import os
from pathlib import Path

from pyenroot.containers.names import existing_container
from pyenroot.containers.tree import ensure_owner_rwx, remove_tree
from pyenroot.containers.work import clean_stale_work, take_lock, work_name
from pyenroot.errors import StorageError


def remove_container(settings, name: str) -> None:
    """Delete a container: it disappears from `list` at once, then its files are removed."""
    path = existing_container(settings, name)
    discard(path)


def discard(path: Path) -> None:
    """Move `path` (a container dir, or a stray file/link) to a hidden work name, then delete it.

    The lock is taken before the rename so that no concurrent clean-up deletes it under us; a kill in the
    middle leaves a hidden, unlocked entry that the next create or remove cleans up.
    """
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags)
        except PermissionError:  # its owner's bits are gone (a chmod, an image's mode): ours to give back
            ensure_owner_rwx(str(path), os.lstat(path))
            fd = os.open(path, flags)
    except OSError as exc:
        raise StorageError(f"cannot remove {path}: {exc.strerror}") from None
    try:
        take_lock(fd, wait=True)
        trash = path.parent / work_name()
        try:
            os.rename(path, trash)
        except OSError as exc:
            raise StorageError(f"cannot remove {path}: {exc.strerror}") from None
        remove_tree(trash)
    finally:
        os.close(fd)
    clean_stale_work(path.parent)
