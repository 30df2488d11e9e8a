"""Read and write glibc's /etc/ld.so.cache (pure: bytes in, bytes out).

The GPU hook gives a container a private copy of its own cache with the driver libraries added, bound over
/etc/ld.so.cache, so the image stays untouched and no ldconfig has to run inside the container.
Format: glibc's "new" cache (`glibc-ld.so.cache1.1`, optionally after the old libc5 table), entries sorted
the way the loader's binary search expects (descending by `libcmp`), strings after the entries, then an
optional extension block (glibc-hwcaps subdirectory names).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable

from pyenroot.record import record

MAGIC_OLD = b"ld.so-1.7.0"
MAGIC_NEW = b"glibc-ld.so.cache1.1"
EXTENSION_MAGIC = 0xEAA42174
EXTENSION_TAG_GENERATOR = 0
EXTENSION_TAG_HWCAPS = 1
GENERATOR = b"pyenroot (NVIDIA driver libraries added to the image's cache)"
HWCAP_EXTENSION = 1 << 62

# The loader accepts a cache whose endianness flag is unset or its own.
_ORDER = "<" if sys.byteorder == "little" else ">"
_ENDIAN_FLAG = 2 if sys.byteorder == "little" else 3
_HEADER = struct.Struct(_ORDER + "20sIIB3xI12x")  # magic+version, nlibs, len_strings, flags, extension_offset
_ENTRY = struct.Struct(_ORDER + "iIIIQ")  # flags, key, value, osversion (unused), hwcap
_OLD_HEADER = struct.Struct(_ORDER + "11sxI")
_OLD_ENTRY_SIZE = 12
_EXT_HEADER = struct.Struct(_ORDER + "II")  # magic, section count
_EXT_SECTION = struct.Struct(_ORDER + "IIII")  # tag, flags, offset, size

# ld.so's flags for an ELF library of each architecture (FLAG_ELF_LIBC6 | the architecture bits).
FLAG_ELF_LIBC6 = 0x0003
FLAGS_BY_MACHINE = {"x86_64": 0x0303, "aarch64": 0x0A03, "ppc64le": 0x0503, "i386": 0x0003, "i686": 0x0003}


@record(frozen=True)
class CacheEntry:
    name: str  # what programs ask for, e.g. libcuda.so.1
    path: str  # where the loader finds it, a path inside the container
    flags: int
    hwcap: int = 0
    hwcaps_subdir: str | None = None  # glibc-hwcaps subdirectory of an extension entry (e.g. x86-64-v3)


class CacheFormatError(ValueError):
    """The bytes are not an ld.so.cache this module understands."""


def libcmp(left: str, right: str) -> int:
    """glibc's `_dl_cache_libcmp`: like strcmp, but runs of digits compare as numbers (libfoo.so.10 > .so.9)."""
    i = j = 0
    while i < len(left):
        a = left[i]
        b = right[j] if j < len(right) else ""
        if a.isdigit() and a.isascii():
            if not (b.isdigit() and b.isascii()):
                return 1
            start_i, start_j = i, j
            while i < len(left) and left[i].isascii() and left[i].isdigit():
                i += 1
            while j < len(right) and right[j].isascii() and right[j].isdigit():
                j += 1
            difference = int(left[start_i:i]) - int(right[start_j:j])
            if difference:
                return difference
        elif b.isdigit() and b.isascii():
            return -1
        elif a != b:
            return ord(a) - (ord(b) if b else 0)
        else:
            i += 1
            j += 1
    return 0 - (ord(right[j]) if j < len(right) else 0)


def _string_at(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    if offset >= len(data) or end < 0:
        raise CacheFormatError(f"string offset {offset} outside the cache")
    return data[offset:end].decode("utf-8", "surrogateescape")


def _new_section(data: bytes) -> bytes:
    """The new-format part of a cache file (after the old table, if there is one)."""
    if data.startswith(MAGIC_NEW):
        return data
    if data.startswith(MAGIC_OLD):
        if len(data) < _OLD_HEADER.size:
            raise CacheFormatError("truncated old-format header")
        _, old_count = _OLD_HEADER.unpack_from(data)
        offset = _OLD_HEADER.size + old_count * _OLD_ENTRY_SIZE
        offset = (offset + 7) & ~7  # aligned like struct cache_file_new
        if data[offset:offset + len(MAGIC_NEW)] == MAGIC_NEW:
            return data[offset:]
        raise CacheFormatError("old-format cache without a new-format part")
    raise CacheFormatError("not an ld.so.cache")


def _hwcaps_subdirs(data: bytes, extension_offset: int) -> list[str]:
    if not extension_offset or extension_offset + _EXT_HEADER.size > len(data):
        return []
    magic, count = _EXT_HEADER.unpack_from(data, extension_offset)
    if magic != EXTENSION_MAGIC:
        return []
    names: list[str] = []
    for number in range(count):
        position = extension_offset + _EXT_HEADER.size + number * _EXT_SECTION.size
        if position + _EXT_SECTION.size > len(data):
            raise CacheFormatError("truncated extension section table")
        tag, _, offset, size = _EXT_SECTION.unpack_from(data, position)
        if tag == EXTENSION_TAG_HWCAPS:
            offsets = struct.unpack_from(f"{_ORDER}{size // 4}I", data, offset)
            names.extend(_string_at(data, string_offset) for string_offset in offsets)
    return names


def parse(data: bytes) -> list[CacheEntry]:
    """The entries of a cache file, in file order."""
    new = _new_section(data)
    if len(new) < _HEADER.size:
        raise CacheFormatError("truncated header")
    _, count, _, _, extension_offset = _HEADER.unpack_from(new)
    if _HEADER.size + count * _ENTRY.size > len(new):
        raise CacheFormatError("entry table runs past the end of the file")
    subdirs = _hwcaps_subdirs(new, extension_offset)
    entries = []
    for number in range(count):
        flags, key, value, _, hwcap = _ENTRY.unpack_from(new, _HEADER.size + number * _ENTRY.size)
        subdir = None
        if hwcap & HWCAP_EXTENSION:
            index = hwcap & 0xFFFFFFFF
            if index >= len(subdirs):
                raise CacheFormatError(f"glibc-hwcaps index {index} without a subdirectory name")
            subdir = subdirs[index]
        entries.append(CacheEntry(_string_at(new, key), _string_at(new, value), flags, hwcap, subdir))
    return entries


def _sort(entries: Iterable[CacheEntry]) -> list[CacheEntry]:
    """ldconfig's order: names descending by libcmp, then higher flags first, hwcaps entries before plain ones."""
    import functools

    def compare(first: CacheEntry, second: CacheEntry) -> int:
        result = libcmp(second.name, first.name)
        if result:
            return result
        if first.flags != second.flags:
            return -1 if first.flags > second.flags else 1
        first_ext, second_ext = first.hwcaps_subdir is not None, second.hwcaps_subdir is not None
        if first_ext != second_ext:
            return -1 if first_ext else 1
        return 0

    return sorted(entries, key=functools.cmp_to_key(compare))


class _Strings:
    """The string table: each distinct string once, offsets counted from the start of the new header."""

    def __init__(self, base: int):
        self.base = base
        self.blob = bytearray()
        self.offsets: dict[str, int] = {}

    def add(self, text: str) -> int:
        if text not in self.offsets:
            self.offsets[text] = self.base + len(self.blob)
            self.blob += text.encode("utf-8", "surrogateescape") + b"\0"
        return self.offsets[text]


def build(entries: Iterable[CacheEntry]) -> bytes:
    """A new-format cache holding `entries` (sorted here), readable by glibc 2.2 and later."""
    ordered = _sort(entries)
    subdirs = sorted({e.hwcaps_subdir for e in ordered if e.hwcaps_subdir is not None})
    strings = _Strings(_HEADER.size + len(ordered) * _ENTRY.size)
    table = bytearray()
    for entry in ordered:
        hwcap = entry.hwcap
        if entry.hwcaps_subdir is not None:
            hwcap = (hwcap & ~0xFFFFFFFF) | HWCAP_EXTENSION | subdirs.index(entry.hwcaps_subdir)
        table += _ENTRY.pack(entry.flags, strings.add(entry.name), strings.add(entry.path), 0, hwcap)
    subdir_offsets = [strings.add(name) for name in subdirs]
    body = bytes(table) + bytes(strings.blob)
    # The extension block names its generator (shown by `ldconfig -p`) and lists glibc-hwcaps subdirectories.
    extension_offset = (_HEADER.size + len(body) + 3) & ~3
    body += b"\0" * (extension_offset - _HEADER.size - len(body))
    sections = [(EXTENSION_TAG_GENERATOR, GENERATOR)]
    if subdir_offsets:
        sections.append((EXTENSION_TAG_HWCAPS, struct.pack(f"{_ORDER}{len(subdir_offsets)}I", *subdir_offsets)))
    data_offset = extension_offset + _EXT_HEADER.size + len(sections) * _EXT_SECTION.size
    table_part = bytearray(_EXT_HEADER.pack(EXTENSION_MAGIC, len(sections)))
    data_part = bytearray()
    for tag, payload in sections:
        while (data_offset + len(data_part)) % 4:
            data_part += b"\0"
        table_part += _EXT_SECTION.pack(tag, 0, data_offset + len(data_part), len(payload))
        data_part += payload
    extension = bytes(table_part + data_part)
    header = _HEADER.pack(MAGIC_NEW, len(ordered), len(strings.blob), _ENDIAN_FLAG, extension_offset)
    return header + body + extension


def merged(container: bytes | None, additions: Iterable[CacheEntry]) -> bytes:
    """The container's cache with `additions` put in; an added name replaces the container's own entry of
    the same name and flags, so the host driver's library wins over a stale copy in the image."""
    added = list(additions)
    replaced = {(e.name, e.flags) for e in added}
    kept: list[CacheEntry] = []
    if container:
        try:
            kept = [e for e in parse(container) if (e.name, e.flags) not in replaced]
        except CacheFormatError:
            kept = []  # an unreadable cache only speeds up lookups: ld.so still searches its default dirs
    return build(kept + added)
