"""Stream the merged image as one tar: generated files first, then each layer top first, filtered by the planner.

Nothing is extracted: each layer is decompressed once (pigz/gzip or zstd in a subprocess, the next layer's
decompressor started ahead so it works while this one is copied; a gzip layer's zstd copy from the cache
when there is one, see `layercopy.py`), its headers are decided by
`layers.MergePlanner` as they are read, and surviving entries are copied straight to the sink (tar2sqfs's
stdin, or `tar -x` for `load`). Memory stays bounded by the pipe buffers and the planner's path table
(`pathtable.py`: tens of bytes a path).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from pyenroot import tools
from pyenroot.content.model import LocalLayer
from pyenroot.errors import ImageError
from pyenroot.image import layers as plan
from pyenroot.image import tarstream

if TYPE_CHECKING:
    from pyenroot.image.layercopy import CopyWriter, LayerCopies

BLOCK = tarstream.BLOCK
COPY_CHUNK = tarstream.CHUNK
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class MergeResult:
    entries: int = 0
    data_bytes: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Decompressor:
    """Programs used to decompress layers."""

    gzip: str = "gzip"
    threads: int = 1

    @property
    def gzip_name(self) -> str:
        """The gzip program's file name (`pigz`, `igzip`, ...), without its directory and options."""
        return os.path.basename((shlex.split(self.gzip) or ["gzip"])[0])

    def argv(self, kind: str) -> list[str] | None:
        if kind == "gzip":
            program = shlex.split(self.gzip) or ["gzip"]  # ENROOT_GZIP_PROGRAM may carry options
            if self.gzip_name == "pigz" and "-p" not in program:
                program += ["-p", str(max(1, self.threads))]
            return [*program, "-d", "-c"]
        if kind == "zstd":
            return ["zstd", "-d", "-c", "-q", f"-T{max(1, self.threads)}"]
        return None


def sniff_compression(path: os.PathLike | str) -> str:
    """'gzip', 'zstd' or 'none', from the first bytes (media types of archives are not always right)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"


class ReadAhead:
    """Reads a pipe in a thread into at most `limit` bytes of memory, so that a decompressor can run ahead
    of the merge (which reads layers one after another) without unbounded buffering."""

    def __init__(self, raw: BinaryIO, limit: int):
        self._raw = raw
        self._limit = max(COPY_CHUNK, limit)
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # already consumed bytes of the first chunk
        self._size = 0
        self._eof = False
        self._closed = False
        self._error: OSError | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, name="read-ahead", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        fd = self._raw.fileno()
        while True:
            with self._cond:
                while self._size >= self._limit and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                chunk = os.read(fd, COPY_CHUNK)
            except OSError as exc:
                chunk, error = b"", exc
            else:
                error = None
            with self._cond:
                if chunk:
                    self._chunks.append(chunk)
                    self._size += len(chunk)
                else:
                    self._eof, self._error = True, error
                self._cond.notify_all()
                if not chunk:
                    return

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        with self._cond:
            while not self._chunks and not self._eof:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if not self._chunks:
                return 0
            first = self._chunks[0]
            count = min(len(view), len(first) - self._offset)
            view[:count] = first[self._offset:self._offset + count]
            self._offset += count
            if self._offset == len(first):
                self._chunks.popleft()
                self._offset = 0
            self._size -= count
            self._cond.notify_all()
        return count

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes, fewer only at the end of the stream (like a buffered reader)."""
        if size < 0:
            size = COPY_CHUNK
        out = bytearray(size)
        view = memoryview(out)
        filled = 0
        while filled < size:
            got = self.readinto(view[filled:])
            if not got:
                break
            filled += got
        return bytes(out[:filled])

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop reading; the writer of the pipe must have finished or been killed first."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self._raw.close()


class LayerStream:
    """A layer's uncompressed tar bytes, read from a decompressor's pipe (or the file itself).

    With `read_ahead` (bytes), the pipe is emptied by a thread into a bounded buffer, so the decompressor
    keeps working while earlier layers are merged. With `copies`, a gzip layer is read from its zstd copy
    when a good one exists; otherwise (and with `tee`) its bytes also go into a new copy on their way from the
    decompressor (`CopyWriter.feed`), which is kept only once the layer was read to its end and its
    decompressor succeeded.
    """

    def __init__(self, layer: LocalLayer, decompressor: Decompressor, read_ahead: int = 0,
                 copies: LayerCopies | None = None, *, tee: bool = True):
        self.layer = layer
        self.process: subprocess.Popen | None = None
        self.copy_writer: CopyWriter | None = None
        kind = sniff_compression(layer.path)
        source: BinaryIO | None = copies.open_copy(layer) if copies is not None and kind == "gzip" else None
        if source is not None:
            kind = "zstd"
        elif copies is not None and kind == "gzip" and tee:
            self.copy_writer = copies.writer(layer)
        argv = decompressor.argv(kind)
        if argv is None:
            # Unbuffered: the tar reader buffers itself, and splices large files' data from the descriptor.
            self.file: BinaryIO | ReadAhead = open(layer.path, "rb", buffering=0)  # noqa: SIM115
            return
        try:
            self.process = self._start(argv, source or open(layer.path, "rb"))  # noqa: SIM115
            assert self.process.stdout is not None
            tools.widen_pipe(self.process.stdout.fileno())  # keeps the decompressor busy while we copy
            output = self.copy_writer.feed(self.process.stdout) if self.copy_writer else self.process.stdout
        except BaseException:
            if self.process is not None:
                self.process.kill()
                self.process.wait()
            if self.copy_writer is not None:
                self.copy_writer.abort()
            raise
        self.file = ReadAhead(output, read_ahead) if read_ahead else output

    def _start(self, argv: list[str], source: BinaryIO) -> subprocess.Popen:
        with source:
            try:
                # The pipe unbuffered (a raw io.FileIO): the tar reader buffers itself, and splices large
                # files' data from it to the sink without copying it through Python.
                return tools.spawn(argv, stdin=source, stdout=tools.PIPE, bufsize=0, many_files=True)
            except FileNotFoundError:
                raise ImageError(f"cannot decompress layer {self.layer.descriptor.digest}: {argv[0]} is not "
                                 "installed", hint="install pigz or gzip, and zstd") from None

    def close(self, *, check: bool) -> None:
        """Close the stream (once); with `check`, a decompressor failure becomes an ImageError."""
        if self.file.closed:
            return
        if check and self.process is not None:
            # Read to the end: what follows the tar's end marker must not make the decompressor fail on EPIPE.
            while self.file.read(COPY_CHUNK):
                pass
        if self.process is not None and not check:
            self.process.kill()
        self.file.close()
        if self.process is None:
            return
        rc = self.process.wait()
        err = self.process.stderr.read().decode(errors="replace").strip() if self.process.stderr else ""
        if self.process.stderr:
            self.process.stderr.close()
        if self.copy_writer is not None:
            if check and rc == 0:
                self.copy_writer.commit()
            else:
                self.copy_writer.abort()
        if check and rc != 0:
            raise ImageError(f"layer {self.layer.descriptor.digest} is corrupt: "
                             f"{err.splitlines()[-1] if err else 'decompression failed'}")


def _members(stream: LayerStream) -> Iterator[tuple[tarstream.TarReader, tarstream.Member]]:
    reader = tarstream.TarReader(stream.file, f"layer {stream.layer.descriptor.digest}")
    try:
        while (member := reader.next()) is not None:
            yield reader, member
    except OSError as exc:
        raise ImageError(f"layer {stream.layer.descriptor.digest}: read error: {exc.strerror}") from None


class TarWriter:
    """Writes tar entries, owned by root with sanitised modes, to a binary sink."""

    def __init__(self, sink: BinaryIO):
        self.sink = sink
        self.entries = 0
        self.data_bytes = 0

    def header(self, name: str, kind: str, *, mode: int, mtime: int, size: int = 0, link: str = "",
               xattrs: dict[str, str] | None = None) -> None:
        self.sink.write(tarstream.header_bytes(name, kind, mode=plan.sanitize_mode(kind, mode), mtime=int(mtime),
                                               size=size if kind == plan.FILE else 0, linkname=link,
                                               xattrs=plan.kept_xattrs(xattrs or {})))
        self.entries += 1

    def member(self, reader: tarstream.TarReader, member: tarstream.Member, name: str, kind: str, link: str) -> None:
        """A member read from a layer, under `name`, with its data."""
        size = member.size if kind == plan.FILE else 0
        self.header(name, kind, mode=member.mode, mtime=member.mtime, size=size, link=link, xattrs=member.xattrs)
        if size:
            reader.copy_data(member, self.sink)
            self.data_bytes += size

    def file(self, name: str, content: bytes, *, mode: int = 0o644, mtime: int = 0) -> None:
        self.header(name, plan.FILE, mode=mode, mtime=mtime, size=len(content))
        self.sink.write(content + bytes(-len(content) % BLOCK))
        self.data_bytes += len(content)

    def close(self) -> None:
        self.sink.write(tarstream.end_of_archive())
        self.sink.flush()


# A layer on disk, or one still being downloaded (a Future that yields it).
LayerSource = LocalLayer | Future


def _ready(item: LayerSource) -> bool:
    return not isinstance(item, Future) or item.done()


def _local(item: LayerSource) -> LocalLayer:
    return item.result() if isinstance(item, Future) else item


class Merger:
    """Writes the merged tar of generated files + layers (given bottom first) to a sink."""

    def __init__(self, writer: TarWriter, decompressor: Decompressor,
                 on_layer: Callable[[int, int, LocalLayer], None] | None = None, *, ahead: int = 1,
                 read_ahead_budget: int = 0, copies: LayerCopies | None = None):
        self.writer = writer
        self.decompressor = decompressor
        self.copies = copies
        self.planner = plan.MergePlanner()
        self.on_layer = on_layer
        # Decompressors running before their layer is read: one just needs the pipe's buffer; more need
        # memory to run into, and share the budget.
        self.ahead = max(1, ahead)
        self.read_ahead = read_ahead_budget // self.ahead if self.ahead > 1 else 0

    def run(self, image_layers: list[LayerSource], generated: dict[str, bytes], workdir: str | None,
            mtime: int) -> MergeResult:
        self._generated(generated, mtime)
        top_first = list(reversed(image_layers))
        ahead: dict[int, LayerStream] = {}
        try:
            for index, item in enumerate(top_first):
                stream = ahead.pop(index, None) or LayerStream(_local(item), self.decompressor, copies=self.copies)
                try:
                    # Start the next decompressors now, so they work while this layer is copied (if on disk);
                    # a failed download raises here, and this layer's stream (and copy) must end too.
                    for following in range(index + 1, min(index + 1 + self.ahead, len(top_first))):
                        if following not in ahead and _ready(top_first[following]):
                            ahead[following] = LayerStream(_local(top_first[following]), self.decompressor,
                                                           self.read_ahead, self.copies)
                    if self.on_layer:
                        self.on_layer(index, len(top_first), stream.layer)
                    label = f"layer {len(top_first) - index} ({stream.layer.descriptor.digest[:19]})"
                    self._layer(stream, label=label)
                except BaseException:
                    stream.close(check=False)
                    raise
                stream.close(check=True)
        finally:
            for stream in ahead.values():
                stream.close(check=False)
        self._cross_links()
        for directory in self.planner.unwritten_directories():
            self.writer.header(directory, plan.DIR, mode=0o755, mtime=mtime)
        self._workdir(workdir, mtime)
        self.writer.close()
        warnings = list(self.planner.warnings)
        if self.planner.suppressed_warnings:
            warnings.append(f"... and {self.planner.suppressed_warnings} more entries dropped or changed")
        return MergeResult(self.writer.entries, self.writer.data_bytes, warnings)

    def _generated(self, files: dict[str, bytes], mtime: int) -> None:
        self.planner.start_layer("generated files")
        for name, content in files.items():
            decision = self.planner.decide(plan.Header(name, plan.FILE))
            if decision.action is plan.Action.EMIT:
                self.writer.file(decision.path, content, mtime=mtime)
        self.planner.finish_layer()

    def _layer(self, stream: LayerStream, label: str) -> None:
        self.planner.start_layer(label)
        for reader, member in _members(stream):
            decision = self.planner.decide(plan.Header(member.name, member.kind, member.linkname))
            if decision.action is not plan.Action.EMIT:
                continue
            if member.kind == plan.HARDLINK:
                self.writer.header(decision.path, plan.HARDLINK, mode=member.mode, mtime=member.mtime,
                                   link=decision.link)
            else:
                self.writer.member(reader, member, decision.path, member.kind, member.linkname)
        pending = self.planner.finish_layer()
        if pending:
            stream.close(check=True)
            self._materialize(stream.layer, pending)

    def _materialize(self, layer: LocalLayer, pending: list[plan.Materialization]) -> None:
        """Read the layer again for the shadowed files that its own hard links still need (rare)."""
        wanted = {m.target: m for m in pending}
        again = LayerStream(layer, self.decompressor, copies=self.copies, tee=False)
        try:
            for reader, member in _members(again):
                if member.kind != plan.FILE:
                    continue
                try:
                    path, _ = plan.normalize_name(member.name)
                except plan.HostileEntry:
                    continue
                item = wanted.pop(path, None)
                if item is None:
                    continue
                self.writer.member(reader, member, item.copy, plan.FILE, "")
                for link in item.links:
                    self.writer.header(link, plan.HARDLINK, mode=member.mode, mtime=member.mtime, link=item.copy)
                if not wanted:
                    break
        finally:
            again.close(check=False)  # the first pass read this layer whole and checked it

    def _cross_links(self) -> None:
        for link in self.planner.finish():
            self.writer.header(link.path, plan.HARDLINK, mode=0o644, mtime=0, link=link.target)

    def _workdir(self, workdir: str | None, mtime: int) -> None:
        # enroot creates the working directory in the image: the container's root may be read-only.
        if not workdir:
            return
        try:
            path, _ = plan.normalize_name(workdir)
        except plan.HostileEntry:
            self.planner.warnings.append(f"working directory {workdir!r} leaves the image: not created")
            return
        if not path or self.planner.has_directory(path):
            return
        if self.planner.can_add_directory(path):
            self.writer.header(path, plan.DIR, mode=0o755, mtime=mtime)
        else:
            self.planner.warnings.append(f"working directory {workdir!r} is not a directory in the image")


def write_merged(image_layers: list[LayerSource], generated: dict[str, bytes], sink: BinaryIO, *,
                 decompressor: Decompressor, workdir: str | None = None, mtime: int = 0,
                 on_layer: Callable[[int, int, LocalLayer], None] | None = None, ahead: int = 1,
                 read_ahead_budget: int = 0, copies: LayerCopies | None = None) -> MergeResult:
    """Write the merged tar stream of an image to `sink` (layers bottom first); return counts and warnings.
    With `copies`, gzip layers are read from their zstd copies, and copies are written where missing."""
    merger = Merger(TarWriter(sink), decompressor, on_layer, ahead=ahead, read_ahead_budget=read_ahead_budget,
                    copies=copies)
    return merger.run(image_layers, generated, workdir, mtime)
