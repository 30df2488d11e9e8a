"""The one squashfs check: superblock parsing and the errors for files that are not whole images."""

from __future__ import annotations

import struct

import pytest

from pyenroot import squashfs
from pyenroot.errors import ImageError


def _superblock(*, magic=squashfs.MAGIC, compression=6, major=4, bytes_used=96) -> bytes:
    fields = [magic, 1, 0, 131072, 0, compression, 17, 0, 1, major, 0, 0, bytes_used, 96] + [0] * 5
    return struct.pack("<IIIIIHHHHHHQQQQQQQQ", *fields)


def test_superblock_fields():
    superblock = squashfs.parse_superblock(_superblock(compression=4, bytes_used=4096))
    assert superblock is not None
    assert (superblock.compressor, superblock.major, superblock.bytes_used) == ("xz", 4, 4096)


@pytest.mark.parametrize("data", [b"", b"hsqs", _superblock(magic=0x12345678), b"\0" * 200])
def test_not_a_superblock(data):
    assert squashfs.parse_superblock(data) is None


def test_a_whole_image_passes(tmp_path):
    image = tmp_path / "a.sqsh"
    image.write_bytes(_superblock(bytes_used=200) + b"\0" * 104)
    assert squashfs.check_image(image) == image.resolve()
    assert squashfs.is_squashfs(image) and squashfs.compressor_of(image) == "zstd"


@pytest.mark.parametrize(("content", "message"), [
    (b"plain text\n", "not a squashfs image"),
    (_superblock(bytes_used=4096), "truncated squashfs image: .* has 96 of 4096 bytes"),
    (_superblock(major=3), "unsupported squashfs version 3"),
])
def test_bad_images_are_named(tmp_path, content, message):
    image = tmp_path / "a.sqsh"
    image.write_bytes(content)
    with pytest.raises(ImageError, match=message) as raised:
        squashfs.check_image(image)
    fault = squashfs.problem(content, len(content), image)  # what the image cache reports: the same sentence
    assert (raised.value.message, raised.value.hint) == (fault.message, fault.hint)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such image file"):
        squashfs.check_image(tmp_path / "missing.sqsh")
    with pytest.raises(ImageError, match="is not a regular file"):
        squashfs.check_image(tmp_path)
