"""A small, fast tar reader and writer for streams (ustar, GNU long names, PAX), used by the layer merge.

Python's tarfile spends ~150 µs per entry in stream mode (it re-slices its buffer on every read); images
have tens of thousands of entries, so the merge reads and writes headers itself and copies data in
large chunks through preallocated buffers. Only what layers use is supported: regular files, directories,
links, FIFOs and devices (reported, never created); sparse entries are read over and reported as unsupported.
"""

from __future__ import annotations

import errno
import io
import os
from dataclasses import dataclass, field
from typing import BinaryIO

from pyenroot.errors import ImageError

BLOCK = 512
CHUNK = 1 << 20
# Read size for headers and small files: a large file's data mostly stays in the kernel (see SPLICE_MIN).
REFILL = 64 << 10
# From this much data on, a member's rest is spliced rather than copied (below it, the syscalls cost more).
SPLICE_MIN = 64 << 10
_splice = getattr(os, "splice", None)  # Linux, Python >= 3.10
_NO_SPLICE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
_ZERO_BLOCK = bytes(BLOCK)

# typeflag -> kind (layers.py's vocabulary)
KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"1": "hardlink", b"2": "symlink", b"3": "char", b"4": "block",
         b"5": "dir", b"6": "fifo"}
TYPEFLAGS = {"file": b"0", "hardlink": b"1", "symlink": b"2", "dir": b"5", "fifo": b"6"}
_META = {b"L", b"K", b"x", b"g", b"X"}
_NO_DATA = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})  # links, devices, directories, FIFOs: no data
_XATTR = "SCHILY.xattr."


class TarFormatError(ImageError):
    """The stream is not a tar archive we can read."""


@dataclass
class Member:
    """One tar entry's header, after GNU long names and PAX records are applied."""

    name: str
    kind: str  # file, dir, symlink, hardlink, fifo, char, block, other
    size: int  # bytes of data that follow the header in the archive
    mode: int = 0o644
    mtime: int = 0
    linkname: str = ""
    xattrs: dict[str, str] = field(default_factory=dict)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _field(block: bytes, start: int, end: int) -> bytes:
    raw = block[start:end]
    nul = raw.find(b"\0")
    return raw if nul < 0 else raw[:nul]


def _number(block: bytes, start: int, end: int) -> int:
    raw = block[start:end]
    if raw[0] & 0x80:  # GNU base-256 for values that do not fit in octal
        value = int.from_bytes(raw[1:], "big")
        return value - (1 << (8 * (len(raw) - 1))) if raw[0] & 0x40 else value
    text = raw.replace(b"\0", b" ").strip()
    if not text:
        return 0
    return int(text, 8)  # ValueError: not a tar header; the reader says which archive


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block, 148, 156)
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    return stored == computed


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        if length <= 0:
            raise ValueError("invalid PAX record length")
        record = data[space + 1:pos + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = _decode(value)
        pos += length
    return records


class TarReader:
    """Reads members from a tar byte stream, strictly forward.

    The reader keeps its own buffer (headers and small files are read in REFILL pieces), so it knows exactly
    which bytes it has taken from the stream. From a raw pipe or file (`io.FileIO`: nothing buffered behind the
    reader's back) the data of a large member is moved to the sink with splice(2), never copied through Python.
    """

    def __init__(self, stream: BinaryIO, what: str):
        self.stream = stream
        self.what = what
        self._buffer = bytearray(CHUNK)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0  # the buffered, not yet consumed bytes: _buffer[_start:_end]
        self._pending = 0  # data + padding of the current member not yet consumed
        self._splice_from = stream.fileno() if isinstance(stream, io.FileIO) and _splice is not None else None
        self.spliced_bytes = 0

    def _fill(self, size: int) -> bool:
        """Buffer at least `size` (<= CHUNK - REFILL) bytes; False when the stream ends first."""
        while self._end - self._start < size:
            if self._start and self._end + REFILL > CHUNK:
                kept = bytes(self._view[self._start:self._end])  # less than a header: a copy apart is cheap
                self._buffer[:len(kept)] = kept
                self._start, self._end = 0, len(kept)
            got = self.stream.readinto(self._view[self._end:self._end + REFILL])  # type: ignore[attr-defined]
            if not got:
                return False
            self._end += got
        return True

    def _take(self, size: int) -> bytes:
        data = bytes(self._view[self._start:self._start + size])
        self._start += size
        return data

    def _read_exact(self, size: int) -> bytes:
        if size <= CHUNK - REFILL:
            if not self._fill(size):
                raise TarFormatError(f"{self.what}: unexpected end of the archive")
            return self._take(size)
        out = io.BytesIO()  # a meta record larger than the buffer (huge PAX headers): rare
        self._copy(size, out, None)
        return out.getvalue()

    def _block(self) -> bytes | None:
        if not self._fill(BLOCK):
            if self._end == self._start:
                return None  # no end-of-archive marker: accepted, as GNU tar does
            raise TarFormatError(f"{self.what}: unexpected end of the archive")
        return self._take(BLOCK)

    def next(self) -> Member | None:
        """The next member (skipping what was not read of the previous one), or None at the end."""
        try:
            return self._next()
        except ValueError:
            raise TarFormatError(f"{self.what} is not a valid tar archive (unreadable header)") from None

    def _next(self) -> Member | None:
        if self._pending:
            self.skip(self._pending)
        long_name = long_link = None
        pax: dict[str, str] = {}
        while True:
            block = self._block()
            if block is None or block == _ZERO_BLOCK:
                return None
            if not _checksum_ok(block):
                raise TarFormatError(f"{self.what} is not a valid tar archive (header checksum mismatch)")
            typeflag = block[156:157]
            size = _number(block, 124, 136)
            if typeflag in _META:
                data = self._read_exact(size + (-size % BLOCK))[:size]
                if typeflag == b"L":
                    long_name = _decode(data.rstrip(b"\0"))
                elif typeflag == b"K":
                    long_link = _decode(data.rstrip(b"\0"))
                elif typeflag in (b"x", b"X"):
                    pax.update(_pax_records(data))
                continue  # 'g' (global) records carry nothing layers rely on
            return self._member(block, typeflag, size, long_name, long_link, pax)

    def _member(self, block: bytes, typeflag: bytes, size: int, long_name: str | None, long_link: str | None,
                pax: dict[str, str]) -> Member:
        name = _field(block, 0, 100)
        if block[257:263] == b"ustar\0":  # POSIX ustar: a prefix field extends the name
            prefix = _field(block, 345, 500)
            if prefix:
                name = prefix + b"/" + name
        kind = KINDS.get(typeflag, "other")
        if typeflag in _NO_DATA:
            size = 0
        mode = _number(block, 100, 108) & 0o7777
        if not pax:  # most entries: nothing to apply over the ustar fields
            member = Member(long_name or _decode(name), kind, size, mode, _number(block, 136, 148),
                            long_link or _decode(_field(block, 157, 257)))
        else:
            if any(k.startswith("GNU.sparse.") for k in pax):
                kind = "other"
            if "size" in pax and typeflag not in _NO_DATA:
                size = int(pax["size"])
            member = Member(
                name=pax.get("path") or long_name or _decode(name),
                kind=kind,
                size=size,
                mode=mode,
                mtime=int(float(pax["mtime"])) if "mtime" in pax else _number(block, 136, 148),
                linkname=pax.get("linkpath") or long_link or _decode(_field(block, 157, 257)),
                xattrs={k[len(_XATTR):]: v for k, v in pax.items() if k.startswith(_XATTR)},
            )
        self._pending = size + (-size % BLOCK)
        return member

    def skip(self, size: int) -> None:
        self._copy(size, None, None)

    def copy_data(self, member: Member, sink: BinaryIO) -> None:
        """Copy the member's data and padding (a tar block multiple, as the writer needs) to `sink`."""
        self._copy(member.size + (-member.size % BLOCK), sink, member.name)

    def _copy(self, size: int, sink: BinaryIO | None, name: str | None) -> None:
        """Pass `size` bytes of the stream to `sink` (None: drop them): the buffered ones first, then a large
        rest by splice where both ends allow it, else through the buffer."""
        self._pending = 0
        buffered = min(size, self._end - self._start)
        if buffered:
            if sink is not None:
                sink.write(self._view[self._start:self._start + buffered])
            self._start += buffered
            size -= buffered
        if not size:
            return
        self._start = self._end = 0  # the buffer is empty now: reuse it whole
        if sink is not None and size >= SPLICE_MIN and self._splice_from is not None:
            size = self._splice(size, sink, name)
        while size > 0:
            got = self.stream.readinto(self._view[:min(CHUNK, size)])  # type: ignore[attr-defined]
            if not got:
                raise self._truncated(name)
            if sink is not None:
                sink.write(self._view[:got])
            size -= got

    def _splice(self, size: int, sink: BinaryIO, name: str | None) -> int:
        """Move up to `size` bytes from the stream's file descriptor into the sink's; return what is left to copy
        (all of it when splice cannot join these two: neither a pipe, a sink without a descriptor, ...)."""
        assert self._splice_from is not None and _splice is not None
        try:
            target = sink.fileno()
        except (AttributeError, OSError, ValueError):
            return size  # io.BytesIO and the like: copied
        sink.flush()  # the headers written before this data must reach the descriptor first
        while size > 0:
            try:
                moved = _splice(self._splice_from, target, size)
            except OSError as exc:
                if exc.errno not in _NO_SPLICE:
                    raise
                self._splice_from = None  # EINVAL: these descriptors do not splice; nothing was moved
                return size
            if not moved:
                raise self._truncated(name)
            size -= moved
            self.spliced_bytes += moved
        return 0

    def _truncated(self, name: str | None) -> TarFormatError:
        where = f" in {name!r}" if name is not None else ""
        return TarFormatError(f"{self.what}: unexpected end of the archive{where}")

    def drain(self) -> None:
        """Read to the end of the stream (a decompressor must be allowed to finish writing)."""
        self._start = self._end = 0
        while self.stream.readinto(self._view):  # type: ignore[attr-defined]
            pass


# ------------------------------------------------------------------------------------------- writing


def _pax_record_exact(key: str, value: str) -> bytes:
    payload = f" {key}={value}\n".encode("utf-8", "surrogateescape")
    digits = 1
    while True:
        total = digits + len(payload)
        if len(str(total)) == digits:
            return str(total).encode() + payload
        digits += 1


def _split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for the ustar fields, or None when a PAX path record is needed."""
    if len(name) <= 100:
        return b"", name
    if len(name) > 256:
        return None
    cut = name.rfind(b"/", 0, 156)
    while cut > 0:
        if len(name) - cut - 1 <= 100:
            return name[:cut], name[cut + 1:]
        cut = name.rfind(b"/", 0, cut)
    return None


# The constant bytes of a header: the magic and version, and the checksum field taken as spaces while summing.
_MAGIC = b"ustar\x0000"
_CONSTANT_SUM = sum(_MAGIC) + 8 * ord(" ")


def _ustar_block(name: bytes, prefix: bytes, mode: int, size: int, mtime: int, typeflag: bytes,
                 linkname: bytes) -> bytes:
    # Joined from its fields rather than patched into a zeroed block, and summed over the non-zero fields
    # only: a header per entry, tens of thousands of them, is a visible share of the merge's CPU.
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, 0, 0, size, mtime)  # mode, uid, gid, size, mtime
    checksum = sum(name) + sum(numbers) + typeflag[0] + sum(linkname) + sum(prefix) + _CONSTANT_SUM
    return b"".join((name, bytes(100 - len(name)), numbers, b"%06o\0 " % checksum, typeflag,
                     linkname, bytes(100 - len(linkname)), _MAGIC, bytes(80), prefix, bytes(167 - len(prefix))))


def header_bytes(name: str, kind: str, *, mode: int, mtime: int, size: int = 0, linkname: str = "",
                 xattrs: dict[str, str] | None = None) -> bytes:
    """A header for one entry owned by root, with a PAX header in front where ustar cannot hold it."""
    raw_name = name.encode("utf-8", "surrogateescape")
    raw_link = linkname.encode("utf-8", "surrogateescape")
    records = []
    split = _split_name(raw_name)
    if split is None:
        records.append(_pax_record_exact("path", name))
        split = (b"", raw_name[:100])
    if len(raw_link) > 100:
        records.append(_pax_record_exact("linkpath", linkname))
        raw_link = raw_link[:100]
    if size >= 8 ** 11:
        records.append(_pax_record_exact("size", str(size)))
    mtime = min(max(0, mtime), 8 ** 11 - 1)
    for key, value in sorted((xattrs or {}).items()):
        records.append(_pax_record_exact(f"{_XATTR}{key}", value))
    prefix, short = split
    entry = _ustar_block(short, prefix, mode, size if size < 8 ** 11 else 0, mtime, TYPEFLAGS[kind], raw_link)
    if not records:
        return entry
    data = b"".join(records)
    pax = _ustar_block(b"././@PaxHeader", b"", 0o644, len(data), mtime, b"x", b"")
    return pax + data + bytes(-len(data) % BLOCK) + entry


def end_of_archive() -> bytes:
    return bytes(2 * BLOCK)
