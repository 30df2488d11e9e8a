"""What a squashfs image's superblock says, and the one check that a file is an image we can start or unpack.

Every place that needs to know "is this a squashfs image" asks here: a direct start, `create`, `bundle`, the
import's own output and the cached images. Reading the 96-byte superblock is enough to tell an image from any
other file and a truncated copy from a whole one, without running a tool. `problem` decides the fault and its
sentence; `check_image` and the image cache both report that sentence.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from pyenroot.errors import ImageError
from pyenroot.record import record

SUPERBLOCK = struct.Struct("<IIIIIHHHHHHQQQQQQQQ")
MAGIC = 0x73717368  # "hsqs" little-endian
_COMPRESSION_IDS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}  # squashfs_fs.h


@record(frozen=True)
class Superblock:
    compression_id: int
    id_count: int
    major: int
    bytes_used: int  # the image's length; a file shorter than this is truncated
    id_table_start: int

    @property
    def compressor(self) -> str:
        return _COMPRESSION_IDS.get(self.compression_id, "unknown")


def parse_superblock(data: bytes) -> Superblock | None:
    """The superblock at the start of `data`, or None if it is not a squashfs superblock."""
    if len(data) < SUPERBLOCK.size:
        return None
    fields = SUPERBLOCK.unpack_from(data)
    if fields[0] != MAGIC:
        return None
    return Superblock(compression_id=fields[5], id_count=fields[8], major=fields[9], bytes_used=fields[12],
                      id_table_start=fields[13])


@record(frozen=True)
class Fault:
    """Why a file is not a whole squashfs 4 image: the one sentence every caller reports, and what to do."""
    message: str
    hint: str


def problem(head: bytes, size: int, name: str | os.PathLike) -> Fault | None:
    """Why the file `name`, which starts with `head` and is `size` bytes long, is not a whole squashfs 4 image
    (None: it is). A file too short for a superblock has no squashfs magic either: one fault for both."""
    superblock = parse_superblock(head)
    if superblock is None:
        return Fault(f"not a squashfs image: {name}",
                     "the image must be a .sqsh file made by 'pyenroot import' or 'pyenroot export'")
    if superblock.major != 4:
        return Fault(f"unsupported squashfs version {superblock.major} in {name}",
                     "squashfs 4 images are supported (what mksquashfs and tar2sqfs write)")
    if size < superblock.bytes_used:
        return Fault(f"truncated squashfs image: {name} has {size} of {superblock.bytes_used} bytes",
                     "copy or import the image again")
    return None


def read_superblock(path: str | os.PathLike) -> Superblock | None:
    """The file's superblock; None if it cannot be read or is not squashfs."""
    try:
        with open(path, "rb") as handle:
            return parse_superblock(handle.read(SUPERBLOCK.size))
    except OSError:
        return None


def is_squashfs(path: str | os.PathLike) -> bool:
    return read_superblock(path) is not None


def compressor_of(path: str | os.PathLike) -> str:
    """The compressor named in the image's superblock ("unknown" if the file does not say)."""
    superblock = read_superblock(path)
    return superblock.compressor if superblock else "unknown"


def check_image(image: str | os.PathLike) -> Path:
    """The image's real path if it is a whole, readable squashfs 4 image file; else one ImageError saying why."""
    try:
        path = Path(os.path.realpath(image))
        size = path.stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"no such image file: {image}") from None
    except OSError as exc:  # e.g. a directory on the way that we may not search
        raise ImageError(f"cannot read image {image}: {exc.strerror}") from None
    if not path.is_file():
        raise ImageError(f"not a squashfs image: {image} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ImageError(f"cannot read image {image}: permission denied")
    try:
        with open(path, "rb") as handle:
            head = handle.read(SUPERBLOCK.size)
    except OSError as exc:
        raise ImageError(f"cannot read image {image}: {exc.strerror}") from None
    fault = problem(head, size, image)
    if fault is not None:
        raise ImageError(fault.message, hint=fault.hint)
    return path
