"""Reads the programs a start of a squashfs image will execute while the start still configures the container.

squashfuse serves an image's files on request: a program's first run faults its pages in 128 KiB at a time,
each a FUSE round trip and a block decompressed, after the exec and one after the other (busybox: about 20
requests, 3-4 ms). A thread reading the same files ahead fills the page cache that the exec then finds, while the
main thread mounts and runs the hooks: squashfuse decompresses on one CPU while the start works on another.

The thread only reads, from descriptors opened in the container's root (paths resolved inside it), and ends
when it has read everything, at its first error, or with the process: the launcher closes every descriptor
before the exec (so a read fails; nothing is opened after that), and the exec ends a thread still reading.
"""

from __future__ import annotations

import _thread  # not threading: its import costs a start more than a few of its steps
import contextlib
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from pyenroot.errors import ConfigError
from pyenroot.runtime.mounter import host_path

CHUNK = 1 << 17  # the kernel's read-ahead window on FUSE: one request per read
LIMIT = 64 << 20  # per program: the exec ends the thread sooner in practice


def _open_program(root: Path, candidates: Sequence[str]) -> tuple[int, tuple[int, int]] | None:
    """A read-only descriptor on the first candidate that is a regular file inside `root`, with the file's
    (device, inode); None when there is none."""
    for candidate in candidates:
        try:
            fd = os.open(host_path(root, candidate), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ConfigError):  # missing, unreadable, a link loop: the exec will say what is wrong
            continue
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):
                return fd, (info.st_dev, info.st_ino)
        except OSError:
            pass
        os.close(fd)
    return None


def _open_programs(root: Path, programs: Iterable[Sequence[str]]) -> list[int]:
    """Descriptors on `programs`, one per file: the init shell is often the command's program too (busybox)."""
    fds: list[int] = []
    seen: set[tuple[int, int]] = set()
    for candidates in programs:
        found = _open_program(root, candidates)
        if found is None:
            continue
        fd, identity = found
        if identity in seen:
            os.close(fd)
        else:
            seen.add(identity)
            fds.append(fd)
    return fds


def _read_through(fds: list[int], done: _thread.LockType) -> None:
    buffer = bytearray(CHUNK)
    try:
        for fd in fds:
            offset = 0
            while offset < LIMIT:
                count = os.preadv(fd, [buffer], offset)
                if count <= 0:
                    break
                offset += count
    except OSError:
        pass  # closed before the exec, or unreadable: nothing to read ahead any more
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        done.release()


def read_ahead(root: Path, programs: Iterable[Sequence[str]]) -> _thread.LockType | None:
    """Start reading `programs` (plan.programs_to_read_ahead) in a thread; returns a lock that the thread
    releases when it ends (for tests), or None when none of them is a file."""
    fds = _open_programs(root, programs)
    if not fds:
        return None
    done = _thread.allocate_lock()
    done.acquire()
    _thread.start_new_thread(_read_through, (fds, done))
    return done
