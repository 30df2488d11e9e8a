"""The content-addressed blob cache: `ROOT/blobs/sha256/<hex>`, verified on the way in, safe across processes.

A blob is written to a temp file in its final directory, hashed while it streams, synced and renamed into
place only when the digest matches, so a reader never sees a partial or corrupt entry, even after a kill.
A per-digest `fcntl` lock (`ROOT/locks/<hex>.lock`) lets concurrent importers download each blob once.
Whoever reads a blob holds a shared `flock` on `ROOT/locks/<hex>.use` for as long as it needs it; `cache prune`
removes only entries whose exclusive lock it gets at once (`hold_lock`, shared with the built-image cache).
A gzip blob may have a fast copy next to it in `ROOT/copies/` (`layercopy.py`); it goes with its blob.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pyenroot import trust
from pyenroot.errors import ImageError, StorageError

_DIGEST = r"^sha256:([a-f0-9]{64})$"  # compiled (and cached by re) at its first use, not at import
_PARTIAL_SUFFIX = ".part"


def digest_hex(digest: str) -> str:
    """The hex part of a sha256 digest; anything else (other algorithms, path tricks) is refused."""
    match = re.match(_DIGEST, digest)
    if not match:
        raise ImageError(f"unsupported or malformed digest: {digest!r}")
    return match.group(1)


def _write_error(exc: OSError, path: Path) -> ImageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ImageError(f"no space left on device writing {path}",
                          hint="free some space or point ENROOT_CACHE_PATH elsewhere")
    return ImageError(f"cannot write {path}: {exc.strerror}")


def _hash_file(path: Path, hasher: hashlib._Hash) -> int:
    """Feed a file to `hasher`; return its length."""
    length = 0
    with open(path, "rb") as existing:
        for chunk in iter(lambda: existing.read(1 << 20), b""):
            hasher.update(chunk)
            length += len(chunk)
    return length


def hold_lock(path: Path, *, exclusive: bool, wait: bool = True) -> int | None:
    """An open fd holding `flock` on `path` (created if missing; close it to release). None when `wait` is off
    and someone else holds a conflicting lock, or when a shared lock's file cannot be made (a cache that a site
    fills and users only read): that reader goes without. Prune removes a lock file while it holds it
    exclusively: a lock taken on a file removed meanwhile protects nothing, so then the file is opened again."""
    operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    while True:
        try:
            # Readable by all: in a shared cache, readers of the owner's entries lock the owner's files.
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if not exclusive and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return None
            raise StorageError(f"cannot use the cache directory {path.parent}: {exc.strerror}",
                               hint="ENROOT_CACHE_PATH must be a directory you can read and write") from None
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if os.fstat(fd).st_nlink > 0:
            return fd
        os.close(fd)


def release_lock(fd: int | None, path: Path) -> None:
    """Close a lock from `hold_lock`; its file goes too when nobody else holds it (`hold_lock` reopens a file
    removed under a waiter), so that lock files do not pile up."""
    if fd is not None:
        os.close(fd)
    last = hold_lock(path, exclusive=True, wait=False) if os.path.lexists(path) else None
    if last is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(last)


@contextmanager
def shared_locks(paths: Iterable[Path]) -> Iterator[None]:
    """Hold shared locks on every path (an entry in use) until the block ends."""
    held: list[tuple[int | None, Path]] = []
    try:
        for path in dict.fromkeys(paths):
            held.append((hold_lock(path, exclusive=False), path))
        yield
    finally:
        for fd, path in held:
            release_lock(fd, path)


def touch(path: Path) -> None:
    """Record a use (the entry's mtime is its last use); an entry someone else owns keeps its time."""
    with contextlib.suppress(OSError):
        os.utime(path)


class BlobCache:
    """Blobs by digest under `root`; files private to the user (0600 in 0700 directories). An entry is reused
    by its name only when nobody but the user, root or one of `owners` can have written it (a site may point
    ENROOT_CACHE_PATH at a shared directory)."""

    def __init__(self, root: Path, owners: Collection[int] = ()):
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.locks = self.root / "locks"
        self.copies = self.root / "copies"
        self.owners = frozenset(owners)

    @classmethod
    def of(cls, settings) -> BlobCache:
        """The cache the settings name (ENROOT_CACHE_PATH, PYENROOT_CACHE_OWNERS)."""
        return cls(settings.path("ENROOT_CACHE_PATH"), trust.uids_of(settings.get("PYENROOT_CACHE_OWNERS") or ""))

    def path(self, digest: str) -> Path:
        return self.blobs / digest_hex(digest)

    def copy_paths(self, digest: str) -> tuple[Path, Path]:
        """A blob's fast copy and its record (`layercopy.py` writes and checks them)."""
        hex_part = digest_hex(digest)
        return self.copies / f"{hex_part}.zst", self.copies / f"{hex_part}.json"

    def copy_size(self, digest: str) -> int:
        """Disk use of a blob's fast copy (0 without one)."""
        total = 0
        for path in self.copy_paths(digest):
            with contextlib.suppress(OSError):
                total += os.lstat(path).st_size
        return total

    def has(self, digest: str) -> bool:
        path = self.path(digest)
        try:
            os.lstat(path)
        except FileNotFoundError:
            return False
        except PermissionError:
            raise StorageError(f"cannot read the cache directory {path.parent}: permission denied",
                               hint="ENROOT_CACHE_PATH must be a directory you can read and write") from None
        problem = trust.untrusted(path, "file", owners=self.owners)
        if problem:
            raise trust.UntrustedPathError(f"cache entry {problem}: refusing to use it",
                                           hint="remove it, or point ENROOT_CACHE_PATH at a directory of your own")
        return True

    def _ensure_dirs(self) -> None:
        for directory in (self.root, self.root / "blobs", self.blobs, self.locks):
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create cache directory {directory}: {exc.strerror}") from None

    @contextmanager
    def locked(self, digest: str) -> Iterator[None]:
        """Hold the exclusive per-digest lock: a second process waits here until the first is done."""
        self._ensure_dirs()
        lock_path = self.locks / f"{digest_hex(digest)}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot use the cache directory {self.locks}: {exc.strerror}",
                               hint="ENROOT_CACHE_PATH must be a directory you can read and write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock; the kernel also releases it if we are killed

    def use_lock(self, digest: str) -> Path:
        return self.locks / f"{digest_hex(digest)}.use"

    @contextmanager
    def reading(self, digests: Iterable[str]) -> Iterator[None]:
        """Mark blobs as in use (taken before they are fetched, so that prune cannot remove one in between)."""
        self._ensure_dirs()
        digests = list(dict.fromkeys(digests))
        with shared_locks(self.use_lock(d) for d in digests):
            yield
        for digest in digests:
            touch(self.path(digest))

    def remove_unused(self, digest: str) -> bool:
        """Remove a blob unless something holds it (a reader, a download); False when it was in use."""
        use = hold_lock(self.use_lock(digest), exclusive=True, wait=False)
        if use is None:
            return False
        try:
            download = hold_lock(self.locks / f"{digest_hex(digest)}.lock", exclusive=True, wait=False)
            if download is None:
                return False
            try:
                self.path(digest).unlink(missing_ok=True)
                for path in self.copy_paths(digest):
                    path.unlink(missing_ok=True)
            finally:
                os.close(download)
            self.use_lock(digest).unlink(missing_ok=True)
        finally:
            os.close(use)
        return True

    def _partials(self, digest: str) -> list[Path]:
        if not self.blobs.is_dir():
            return []
        return list(self.blobs.glob(f".{digest_hex(digest)}.*{_PARTIAL_SUFFIX}"))

    def discard_partials(self, digest: str) -> None:
        """Remove temp files a killed process left for `digest`. Call with the digest's lock held."""
        for leftover in self._partials(digest):
            leftover.unlink(missing_ok=True)

    def take_partial(self, digest: str) -> Path | None:
        """The longest temp file a killed process left for `digest` (the others are removed), to resume
        from. Call with the digest's lock held: then no living process is writing it."""
        leftovers = sorted(self._partials(digest), key=lambda p: p.stat().st_size, reverse=True)
        for extra in leftovers[1:]:
            extra.unlink(missing_ok=True)
        return leftovers[0] if leftovers else None

    def store(self, digest: str, chunks: Iterable[bytes], size: int | None = None, *,
              resume: Path | None = None) -> Path:
        """Write a blob from `chunks`, verifying its sha256 (and `size` if known); return its path.

        With `resume` (from `take_partial`), `chunks` continue that file's bytes; its content is hashed first.
        On a mismatch, or any error, nothing is kept (not even the resumed file) and the error names the digest.
        """
        final = self.path(digest)
        self._ensure_dirs()
        hasher = hashlib.sha256()
        written = 0
        try:
            if resume is not None:
                temp = resume
                written = _hash_file(resume, hasher)
                fd = os.open(resume, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            else:
                import tempfile  # (only a download needs it: a Slurm step that finds its image does not)

                fd, temp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=_PARTIAL_SUFFIX, dir=self.blobs)
                temp = Path(temp_name)
        except OSError as exc:
            raise _write_error(exc, resume or self.blobs) from None
        try:
            written = self._write(fd, temp, chunks, size, digest, hasher, written)
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest:
                raise ImageError(f"digest mismatch for blob {digest}: got {actual}",
                                 hint="the registry or something between us and it altered the content")
            if size is not None and size >= 0 and written != size:
                raise ImageError(f"blob {digest} is {written} bytes, the manifest says {size}")
            os.rename(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return final

    @staticmethod
    def _write(fd: int, temp: Path, chunks: Iterable[bytes], size: int | None, digest: str,
               hasher: hashlib._Hash, written: int) -> int:
        out = os.fdopen(fd, "wb")
        try:
            for chunk in chunks:
                hasher.update(chunk)
                written += len(chunk)
                if size is not None and size >= 0 and written > size:
                    raise ImageError(f"blob {digest} is larger than the {size} bytes the manifest says")
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _write_error(exc, temp) from None
            try:
                out.flush()
                # Synced before the rename so that a crash cannot leave a named but empty entry.
                os.fsync(out.fileno())
                out.close()
            except OSError as exc:
                raise _write_error(exc, temp) from None
        finally:
            # After a failure the buffered rest is thrown away with the file: closing must not flush it, or a
            # full disk's second OSError would replace the error that names the problem.
            if not out.closed:
                with contextlib.suppress(OSError):
                    out.close()  # the raw file is closed even when the flush fails
        return written

    def verify(self, digest: str) -> bool:
        """Re-hash a cached blob; True when present and intact."""
        hasher = hashlib.sha256()
        try:
            _hash_file(self.path(digest), hasher)
        except FileNotFoundError:
            return False
        return "sha256:" + hasher.hexdigest() == digest

    def digests(self) -> list[str]:
        """Every complete blob in the cache."""
        if not self.blobs.is_dir():
            return []
        return sorted(f"sha256:{p.name}" for p in self.blobs.iterdir() if re.match(_DIGEST, f"sha256:{p.name}"))
