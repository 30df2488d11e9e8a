"""Hidden work entries in a directory: created locked (flock) for as long as their creator lives, so that the
next run removes those of a killed one and never one in progress. `list` skips every hidden entry."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from pyenroot.containers.tree import remove_tree
from pyenroot.errors import StorageError
from pyenroot.record import record

# Hidden work entries (creation in progress, removal in progress).
WORK_PREFIX = ".pyenroot-work-"
NEW_PREFIX = ".pyenroot-new-"  # a work entry before it is locked: never cleaned while young


@record
class _WorkEntry:
    """A hidden entry in the data directory, locked (flock) for as long as its creator lives."""

    path: Path
    lock_fd: int


def work_name() -> str:
    return f"{WORK_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"


@record(frozen=True)
class WorkKind:
    """Where a kind of work entry lives by name: its prefix, the prefix it has until it is locked, and what a
    failure to create one says."""

    prefix: str = WORK_PREFIX
    new_prefix: str = NEW_PREFIX
    place: str = "the data directory"
    setting: str = "ENROOT_DATA_PATH"


DATA_WORK = WorkKind()


def take_lock(fd: int, *, wait: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def work_dir(base: Path, kind: WorkKind = DATA_WORK) -> Iterator[_WorkEntry]:
    """A fresh hidden directory in `base`, removed on any failure unless it was renamed away."""
    # The entry is locked before it gets a name that clean_stale_work() looks at: otherwise a concurrent
    # cleaner could find it unlocked (like a dead creator's) and delete it under our feet.
    unnamed = base / f"{kind.new_prefix}{work_name()[len(WORK_PREFIX):]}"
    try:
        unnamed.mkdir(mode=0o700)
    except OSError as exc:
        raise StorageError(f"cannot write to {kind.place} {base}: {exc.strerror}",
                           hint=f"check {kind.setting}") from None
    fd = os.open(unnamed, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    take_lock(fd, wait=True)
    path = base / (kind.prefix + unnamed.name[len(kind.new_prefix):])
    try:
        unnamed.rename(path)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            unnamed.rmdir()
        raise
    try:
        yield _WorkEntry(path, fd)
    finally:
        # On success only an empty directory is left (its content was renamed into place).
        with contextlib.suppress(OSError, StorageError):
            remove_tree(path)
        os.close(fd)


def clean_stale_work(base: Path, kind: WorkKind = DATA_WORK) -> list[str]:
    """Remove hidden work entries whose creator died (their lock is free). Returns what was removed."""
    removed = []
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(kind.prefix)]
        _remove_abandoned_new_entries(base, kind.new_prefix)
    except OSError:
        return removed
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
                         | (os.O_DIRECTORY if entry.is_dir(follow_symlinks=False) else 0))
        except OSError:
            continue
        try:
            if take_lock(fd, wait=False):
                remove_tree(Path(entry.path))
                removed.append(entry.name)
        except (OSError, StorageError):
            pass  # best effort: a later run tries again
        finally:
            os.close(fd)
    return removed


def _remove_abandoned_new_entries(base: Path, new_prefix: str = NEW_PREFIX) -> None:
    """A creator killed between mkdir and rename leaves an empty entry: remove those older than an hour."""
    cutoff = time.time() - 3600
    for entry in os.scandir(base):
        if entry.name.startswith(new_prefix):
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.rmdir(entry.path)
