"""The blob cache: verified atomic stores, no partial entries, private files, per-digest locking."""

import hashlib
import multiprocessing
import os
import stat

import pytest

from pyenroot.content.blobs import BlobCache
from pyenroot.errors import ImageError


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_store_and_lookup(tmp_path):
    cache = BlobCache(tmp_path / "cache")
    data = b"hello blob" * 1000
    digest = digest_of(data)
    assert not cache.has(digest)
    path = cache.store(digest, [data[:10], data[10:]], size=len(data))
    assert path == tmp_path / "cache/blobs/sha256" / digest[7:]
    assert path.read_bytes() == data and cache.has(digest) and cache.verify(digest)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in ("", "blobs", "blobs/sha256", "locks"):
        assert stat.S_IMODE((tmp_path / "cache" / directory).stat().st_mode) == 0o700
    assert cache.digests() == [digest]


def test_entries_are_trusted_by_owner_and_mode(tmp_path):
    """A blob under its digest's name that someone else could have written is refused, not reused."""
    from pyenroot.trust import UntrustedPathError

    data = b"planted"
    planted = BlobCache(tmp_path).store(digest_of(data), [data])
    os.chown(planted, 54321, 54321)
    with pytest.raises(UntrustedPathError, match="belongs to uid 54321"):
        BlobCache(tmp_path).has(digest_of(data))
    assert BlobCache(tmp_path, owners={54321}).has(digest_of(data))
    os.chown(planted, os.getuid(), os.getgid())
    planted.chmod(0o666)
    with pytest.raises(UntrustedPathError, match="writable by group or others"):
        BlobCache(tmp_path).has(digest_of(data))


def test_mismatch_keeps_nothing(tmp_path):
    cache = BlobCache(tmp_path)
    digest = digest_of(b"good")
    with pytest.raises(ImageError, match=f"digest mismatch for blob {digest}"):
        cache.store(digest, [b"evil"])
    assert not cache.has(digest)
    assert list((tmp_path / "blobs/sha256").iterdir()) == []


def test_size_limits(tmp_path):
    cache = BlobCache(tmp_path)
    data = b"x" * 100
    with pytest.raises(ImageError, match="larger than the 50 bytes"):
        cache.store(digest_of(data), [data], size=50)
    with pytest.raises(ImageError, match="is 100 bytes, the manifest says 200"):
        cache.store(digest_of(data), [data], size=200)
    assert list((tmp_path / "blobs/sha256").iterdir()) == []


def test_interrupted_stream_keeps_nothing(tmp_path):
    cache = BlobCache(tmp_path)

    def chunks():
        yield b"partial"
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError):
        cache.store(digest_of(b"partial and more"), chunks())
    assert list((tmp_path / "blobs/sha256").iterdir()) == []


def test_bad_digests_are_refused(tmp_path):
    cache = BlobCache(tmp_path)
    for digest in ("sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64):
        with pytest.raises(ImageError, match="malformed digest"):
            cache.path(digest)


def test_discard_partials_and_verify(tmp_path):
    cache = BlobCache(tmp_path)
    data = b"content"
    digest = digest_of(data)
    path = cache.store(digest, [data])
    leftover = path.parent / f".{digest[7:]}.abc123.part"
    leftover.write_bytes(b"half")
    with cache.locked(digest):
        cache.discard_partials(digest)
    assert not leftover.exists() and path.exists()
    path.write_bytes(b"tampered")
    assert not cache.verify(digest)
    assert not cache.verify(digest_of(b"absent"))


def test_full_disk_is_named(tmp_path, monkeypatch):
    cache = BlobCache(tmp_path)

    class FullFile:
        """A file on a full disk: the write fails, and so does the close that would flush what is buffered."""

        closed = False

        def __init__(self, fd, *a, **k):
            self.fd = fd

        def write(self, chunk):
            raise OSError(28, "No space left on device")

        def close(self):
            self.closed = True
            os.close(self.fd)
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdopen", FullFile)
    with pytest.raises(ImageError, match=r"no space left on device writing .*blobs/sha256/"):
        cache.store(digest_of(b"x"), [b"x"])
    assert list((tmp_path / "blobs/sha256").iterdir()) == []


def _hold_lock(root, digest, started, release):
    cache = BlobCache(root)
    with cache.locked(digest):
        started.set()
        release.wait(30)


def test_lock_excludes_other_processes(tmp_path):
    digest = digest_of(b"locked")
    context = multiprocessing.get_context("fork")
    started, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, digest, started, release))
    holder.start()
    try:
        assert started.wait(30)
        import fcntl
        fd = os.open(tmp_path / "locks" / f"{digest[7:]}.lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        release.set()
        holder.join(30)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the holder is gone
        os.close(fd)
    finally:
        release.set()
        holder.join(30)


def test_store_resumes_a_partial_file(tmp_path):
    cache = BlobCache(tmp_path)
    data = b"0123456789" * 100
    digest = digest_of(data)
    cache.store(digest_of(b"other"), [b"other"])  # creates the directories
    partial = tmp_path / "blobs/sha256" / f".{digest[7:]}.x.part"
    partial.write_bytes(data[:300])
    with cache.locked(digest):
        assert cache.take_partial(digest) == partial
        path = cache.store(digest, [data[300:]], len(data), resume=partial)
    assert path.read_bytes() == data and not partial.exists()
    partial.write_bytes(b"wrong start")
    with pytest.raises(ImageError, match="digest mismatch"):
        cache.store(digest_of(b"wrong start!"), [b"?"], resume=partial)
    assert not partial.exists()  # a bad partial is not kept either
