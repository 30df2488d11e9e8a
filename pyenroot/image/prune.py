"""`cache list` and `cache prune`: what ENROOT_CACHE_PATH holds (blobs and built squashfs files) and removing the
least recently used of it. The choice is pure (`choose`); an entry someone holds right now is skipped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pyenroot.content.blobs import BlobCache
from pyenroot.errors import UsageError
from pyenroot.image.built import BuiltImages

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str, what: str = "--max-size") -> int:
    """`500M`, `10G`, `1.5T`, `4096` (bytes); powers of 1024."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"{what}: invalid size {text!r}", hint="a number of bytes with K, M, G or T, e.g. 10G")
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def parse_age(text: str, what: str = "--older-than") -> float:
    """`30d`, `12h`, `90m`, `2w`, `3600` (seconds)."""
    match = _AGE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"{what}: invalid age {text!r}", hint="a number with s, m, h, d or w, e.g. 30d")
    return float(match[1]) * _AGE_UNITS[match[2].lower()]


@dataclass(frozen=True)
class CacheEntry:
    kind: str  # "blob" | "squashfs"
    name: str  # a blob's digest, a built image's key
    size: int
    last_use: float
    images: tuple[str, ...] = ()  # the image URIs that use it


@dataclass(frozen=True)
class Limits:
    max_size: int | None = None
    older_than: float | None = None  # seconds


@dataclass
class PruneResult:
    removed: list[CacheEntry] = field(default_factory=list)
    in_use: list[CacheEntry] = field(default_factory=list)  # wanted gone, but someone holds them
    remaining: int = 0  # bytes left


def choose(entries: Iterable[CacheEntry], limits: Limits, now: float,
           remove: Callable[[CacheEntry], bool]) -> PruneResult:
    """Least recently used first: an entry goes when it is older than the limit, or while the cache is larger
    than allowed; `remove` returns False for an entry in use, which stays (and the next one is tried)."""
    ordered = sorted(entries, key=lambda e: (e.last_use, e.name))
    total = sum(e.size for e in ordered)
    result = PruneResult()
    for entry in ordered:
        too_old = limits.older_than is not None and now - entry.last_use > limits.older_than
        too_big = limits.max_size is not None and total > limits.max_size
        if not (too_old or too_big):
            continue
        if remove(entry):
            result.removed.append(entry)
            total -= entry.size
        else:
            result.in_use.append(entry)
    result.remaining = total
    return result


def list_entries(settings) -> list[CacheEntry]:
    """Every blob and built image in the cache, with the images that use it."""
    blobs = BlobCache.of(settings)
    images = BuiltImages.of(settings)
    users: dict[str, list[str]] = {}
    entries: list[CacheEntry] = []
    for name, record, st in images.entries():
        if record is None:
            entries.append(CacheEntry("squashfs", name, st.st_size, st.st_mtime))
            continue
        for digest in record.blobs:
            users.setdefault(digest, []).append(record.key.source_uri)
        entries.append(CacheEntry("squashfs", name, record.size, st.st_mtime, (record.key.source_uri,)))
    for digest in blobs.digests():
        try:
            st = blobs.path(digest).stat()
        except OSError:
            continue  # pruned meanwhile
        size = st.st_size + blobs.copy_size(digest)  # a layer's fast copy lives and goes with its blob
        entries.append(CacheEntry("blob", digest, size, st.st_mtime, tuple(dict.fromkeys(users.get(digest, ())))))
    return entries


def _remover(settings, dry_run: bool) -> Callable[[CacheEntry], bool]:
    blobs = BlobCache.of(settings)
    images = BuiltImages.of(settings)

    def remove(entry: CacheEntry) -> bool:
        if dry_run:
            return True
        if entry.kind == "blob":
            return blobs.remove_unused(entry.name)
        return images.remove_unused(entry.name)

    return remove


def prune(settings, limits: Limits, *, dry_run: bool = False) -> PruneResult:
    return choose(list_entries(settings), limits, time.time(), _remover(settings, dry_run))
