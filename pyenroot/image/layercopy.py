"""Fast copies of gzip layers: `ROOT/copies/<hex>.zst` and its record `<hex>.json`, next to the blob cache.

gzip decompresses at a fraction of zstd's speed, and on a machine of few cores it competes with the squashfs
compressor: a rebuild of an image whose blobs are cached (other squash options, another platform's config)
reads each gzip layer's zstd copy instead. The copy is written while the merge reads the layer the first time
(`CopyWriter.feed`, between the decompressor and the merge, see `merge.LayerStream`), so it costs no extra
decompression, only zstd -1's compression, once (about twice igzip's decompression). Its record holds the
copy's size and crc32: a copy is used only when both match and the files pass the blob cache's trust check,
checked through the very descriptor the decompressor then reads; otherwise the gzip blob is read and the copy
written again. One writer per blob at a time (a non-blocking flock: a second importer simply reads gzip);
readers hold the blob's use lock, and `cache prune` removes the copy with its blob.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import subprocess
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyenroot import tools, trust
from pyenroot.content.blobs import BlobCache, hold_lock, release_lock
from pyenroot.content.model import LocalLayer
from pyenroot.errors import ImageError, PyenrootError

_BUFFER = 1 << 20  # the crc32 of a copy is taken in chunks this large
_PARTIAL_SUFFIX = ".part"
# Level 1: the cheapest level that still makes copies smaller than the gzip blobs; one thread, because the
# merge's decompressor and the squashfs builder already use the cores.
COMPRESS_ARGV = ("zstd", "-1", "-q", "-c", "-T1", "--check")


@dataclass(frozen=True)
class CopyRecord:
    """What was written: the blob it copies, and the copy's length and crc32."""

    blob: str
    size: int
    crc32: int

    def to_json(self) -> str:
        return json.dumps({"blob": self.blob, "size": self.size, "crc32": self.crc32})

    @classmethod
    def from_json(cls, text: str) -> CopyRecord | None:
        """None for anything but a complete record (other keys, such as older records' `uncompressed`, are
        ignored)."""
        try:
            data = json.loads(text)
            record = cls(str(data["blob"]), int(data["size"]), int(data["crc32"]))
        except (ValueError, KeyError, TypeError):
            return None
        return record if record.size >= 0 else None


def file_crc32(file: BinaryIO) -> tuple[int, int]:
    """(length, crc32) of an open file from its start; zlib's crc32 runs at GB/s."""
    crc, length = 0, 0
    file.seek(0)
    while chunk := file.read(_BUFFER):
        crc = zlib.crc32(chunk, crc)
        length += len(chunk)
    file.seek(0)
    return length, crc


# gzip decompressors about as fast as zstd's: with one of them a copy saves a rebuild little (10-20%) and
# costs the first import much (zstd -1 of every layer, more CPU than the decompression itself).
FAST_GZIP = frozenset({"igzip"})


def writes_copies(setting: str | None, gzip_name: str) -> bool:
    """Whether new copies are written: PYENROOT_CACHE_LAYER_COPIES=auto writes them only behind a slow gzip
    decompressor (`gzip_name`, as `merge.Decompressor.gzip_name` gives it); any other value is a flag
    (checked by the caller for `no`)."""
    return setting != "auto" or gzip_name not in FAST_GZIP


class LayerCopies:
    """The copies of the layers in a blob cache; with `write_new` off, existing copies are read but none made."""

    def __init__(self, cache: BlobCache, *, write_new: bool = True):
        self.cache = cache
        self.write_new = write_new

    @classmethod
    def of(cls, settings, gzip_name: str) -> LayerCopies | None:
        """The copies of ENROOT_CACHE_PATH's blobs, for layers decompressed by `gzip_name`; None when
        PYENROOT_CACHE_LAYER_COPIES is off."""
        if not settings.flag("PYENROOT_CACHE_LAYER_COPIES"):
            return None
        write_new = writes_copies(settings.get("PYENROOT_CACHE_LAYER_COPIES"), gzip_name)
        return cls(BlobCache.of(settings), write_new=write_new)

    def _cached(self, layer: LocalLayer) -> bool:
        """Only a blob of the cache (verified by its digest) gets a copy under that digest."""
        try:
            return layer.path == self.cache.path(layer.descriptor.digest)
        except ImageError:  # a digest the cache cannot name has no copy
            return False

    def open_copy(self, layer: LocalLayer) -> BinaryIO | None:
        """The layer's zstd copy, opened and checked against its record; None when there is none fit to use."""
        if not self._cached(layer):
            return None
        copy_path, record_path = self.cache.copy_paths(layer.descriptor.digest)
        owners = self.cache.owners
        if trust.untrusted(record_path, "file", owners=owners) or trust.untrusted(copy_path, "file", owners=owners):
            return None  # missing, or someone else could have written it
        try:
            record = CopyRecord.from_json(record_path.read_text())
            file = open(copy_path, "rb")  # noqa: SIM115 - handed to the caller
        except (OSError, UnicodeDecodeError):
            return None
        if record is None or record.blob != layer.descriptor.digest or os.fstat(file.fileno()).st_size != record.size:
            file.close()
            return None
        try:
            ok = file_crc32(file) == (record.size, record.crc32)
        except OSError:
            ok = False
        if not ok:
            file.close()
            return None
        return file

    def writer(self, layer: LocalLayer) -> CopyWriter | None:
        """A writer of the layer's copy, unless another process is writing it or it cannot be written."""
        if not self.write_new or not self._cached(layer):
            return None
        digest = layer.descriptor.digest
        try:
            self.cache.copies.mkdir(mode=0o700, exist_ok=True)
            lock_path = self.cache.locks / f"{self.cache.path(digest).name}.copy"
            lock = hold_lock(lock_path, exclusive=True, wait=False)
        except (OSError, PyenrootError):  # an optimisation: a cache we cannot write goes without
            return None
        if lock is None:
            return None
        copy_name = self.cache.copy_paths(digest)[0].name
        for leftover in self.cache.copies.glob(f".{copy_name}.*{_PARTIAL_SUFFIX}*"):
            leftover.unlink(missing_ok=True)  # a killed writer's: with the lock held, nobody else writes one
        try:
            return CopyWriter(self.cache, digest, lock, lock_path)
        except OSError:
            release_lock(lock, lock_path)
            return None


@functools.cache
def _libc_tee():
    import ctypes

    function = ctypes.CDLL(None, use_errno=True).tee
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint)
    function.restype = ctypes.c_ssize_t
    return function


def _tee(source: int, target: int) -> int:
    """tee(2): duplicate up to a chunk of pipe `source` into pipe `target` without consuming it; 0 at the
    end of `source`, -1 when `target` cannot take it (its reader is gone). ctypes drops the GIL meanwhile."""
    import ctypes

    while (count := _libc_tee()(source, target, _BUFFER, 0)) < 0:
        if ctypes.get_errno() != errno.EINTR:
            return -1
    return count


class CopyWriter:
    """Compresses a layer's uncompressed bytes with zstd into a temp file; `commit` checks and names it.
    `feed` puts it between the decompressor and the merge.
    Any failure of its own drops the copy silently: the import goes on from gzip."""

    def __init__(self, cache: BlobCache, digest: str, lock: int, lock_path: Path):
        self.cache = cache
        self.digest = digest
        self._lock, self._lock_path = lock, lock_path
        self.final, self.record_path = cache.copy_paths(digest)
        fd, name = tempfile.mkstemp(prefix=f".{self.final.name}.", suffix=_PARTIAL_SUFFIX, dir=cache.copies)
        self.temp = Path(name)
        try:
            self.process: subprocess.Popen | None = tools.spawn(COMPRESS_ARGV, stdin=tools.PIPE, stdout=fd,
                                                                stderr=tools.DEVNULL, many_files=True, bufsize=0)
        except OSError:
            self.temp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self._pump: threading.Thread | None = None
        self._copy_failed = False

    def feed(self, decompressed: BinaryIO) -> BinaryIO:
        """A pipe that yields the decompressor's output unchanged, while a thread also hands each byte to
        zstd. The thread moves pages with tee(2) and splice(2), so the data never passes through Python
        (through Python, or through coreutils' tee and its 8 KiB reads, a 2 GB image's copies cost 2-5 CPU
        seconds more)."""
        read_end, write_end = os.pipe()
        tools.widen_pipe(write_end)
        self._pump = threading.Thread(target=self._move, args=(decompressed, write_end), name="layer-copy",
                                      daemon=True)
        self._pump.start()
        return open(read_end, "rb", buffering=0)  # the merge reads and closes it

    def _move(self, decompressed: BinaryIO, write_end: int) -> None:
        assert self.process is not None and self.process.stdin is not None
        source, copy = decompressed.fileno(), self.process.stdin.fileno()
        try:
            while True:
                count = _tee(source, copy) if not self._copy_failed else 0
                if count < 0:  # zstd is gone: the layer still reaches the merge, the copy is dropped
                    self._copy_failed = True
                if count <= 0:
                    count = os.splice(source, write_end, _BUFFER)
                    if count == 0:
                        return
                    continue
                while count:
                    count -= os.splice(source, write_end, count)
        except OSError:  # the merge stopped reading: the stream is being closed (or the decompressor failed)
            self._copy_failed = True
        finally:
            os.close(write_end)
            decompressed.close()

    def commit(self) -> None:
        """The whole layer was read and its decompressor succeeded: finish the copy (if it got every byte) and
        name it."""
        if self._pump is not None:
            self._pump.join()
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
            if process.wait() != 0 or self._copy_failed:
                raise OSError("zstd failed")
            with open(self.temp, "rb") as written:
                size, crc = file_crc32(written)
            record = CopyRecord(self.digest, size, crc)
            record_temp = self.temp.with_name(self.temp.name + ".json")
            record_temp.write_text(record.to_json())
            os.chmod(record_temp, 0o600)
            # The copy first: a reader between the two renames sees a record that does not match, and reads gzip.
            os.rename(self.temp, self.final)
            os.rename(record_temp, self.record_path)
        except OSError:
            self.temp.unlink(missing_ok=True)
            self.temp.with_name(self.temp.name + ".json").unlink(missing_ok=True)
        finally:
            release_lock(self._lock, self._lock_path)

    def abort(self) -> None:
        """Drop the copy (the layer was not read whole, or writing failed)."""
        process, self.process = self.process, None
        if process is None:
            return
        process.kill()  # first: a pump waiting for zstd to take more then fails, and ends
        if self._pump is not None:
            self._pump.join()
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        process.wait()
        self.temp.unlink(missing_ok=True)
        release_lock(self._lock, self._lock_path)
