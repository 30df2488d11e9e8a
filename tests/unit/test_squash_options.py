"""ENROOT_SQUASH_OPTIONS (mksquashfs syntax) -> tar2sqfs, and the unsquashfs-compatibility fix."""

from __future__ import annotations

import shlex
import struct
from pathlib import Path

import pytest

from pyenroot.errors import ConfigError
from pyenroot.image import squash


def argv(text):
    return squash.translate_options(text).tar2sqfs_argv(Path("/o.sqsh"), 4)


def test_default_is_lz4():
    plan = squash.translate_options(None)
    assert plan.compressor == "lz4" and not plan.use_mksquashfs
    assert argv(None)[:8] == ["tar2sqfs", "--quiet", "--no-skip", "--force", "-c", "lz4", "-j", "4"]


def test_no_comp_means_gzip_like_mksquashfs():
    assert squash.translate_options("").compressor == "gzip"


@pytest.mark.parametrize("text,expected", [
    ("-comp zstd -Xcompression-level 3", ["-c", "zstd", "-j", "4", "-X", "level=3"]),
    ("-comp lz4 -Xhc", ["-c", "lz4", "-j", "4", "-X", "hc"]),
    ("-comp gzip -Xcompression-level 9 -Xwindow-size 12", ["-c", "gzip", "-j", "4", "-X", "level=9,window=12"]),
    ("-comp xz -b 1M", ["-c", "xz", "-j", "4", "-b", "1048576"]),
    ("-comp xz -Xlc 1 -Xlp 2 -Xpb 0 -Xextreme", ["-c", "xz", "-j", "4", "-X", "lc=1,lp=2,pb=0,extreme"]),
    ("-comp lz4 -processors 2", ["-c", "lz4", "-j", "2"]),
    ("-comp lz4 -no-xattrs -exports", ["-c", "lz4", "-j", "4", "--no-xattr", "--exportable"]),
    ("-comp lz4 -no-progress -quiet -all-root -noappend -mkfs-time 0", ["-c", "lz4", "-j", "4"]),
])
def test_translation(text, expected):
    assert argv(text)[4:-1] == expected
    assert argv(text)[-1] == "/o.sqsh"


@pytest.mark.parametrize("text", ["-comp lzo -noD", "-comp gzip -no-fragments", "-comp xz -Xbcj x86",
                                  "-comp lzo -Xalgorithm lzo1x_1",
                                  "-noI -noF", "-no-duplicates"])
def test_mksquashfs_fallback(text):
    plan = squash.translate_options(text)
    assert plan.use_mksquashfs
    args = plan.mksquashfs_argv(Path("/src"), Path("/o.sqsh"), 2)
    assert args[:3] == ["mksquashfs", "/src", "/o.sqsh"] and "-all-root" in args
    assert all(word in args for word in text.split())


@pytest.mark.parametrize("text,message", [("-comp brotli", "brotli"), ("-frobnicate", "-frobnicate"),
                                          ("-comp", "needs a value"), ("-b 12Q", "12Q"), ("-comp 'lz4", "parsed")])
def test_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        squash.translate_options(text)


def test_parse_size():
    assert squash.parse_size("131072") == 131072
    assert squash.parse_size("128K") == 131072
    assert squash.parse_size("1m") == 1 << 20


def _image(id_block: bytes) -> bytes:
    """A fake image: superblock, then one ID metadata block at 96, then its index at 96+len(block)."""
    index_at = 96 + len(id_block)
    fields = [0x73717368, 1, 0, 131072, 0, 5, 17, 0, 1, 4, 0, 0, index_at + 8, index_at] + [0] * 5
    return struct.pack("<IIIIIHHHHHHQQQQQQQQ", *fields) + id_block + struct.pack("<Q", 96)


def test_fix_single_id_table(tmp_path):
    image = tmp_path / "x.sqsh"
    image.write_bytes(_image(struct.pack("<H", 5) + b"\x40\x00\x00\x00\x00"))  # lz4 of 4 zero bytes, 5 bytes
    assert squash.fix_single_id_table(image)
    data = image.read_bytes()
    assert data[96:102] == struct.pack("<HI", 0x8004, 0)
    assert data[103:111] == struct.pack("<Q", 96)  # the index is untouched
    assert not squash.fix_single_id_table(image)  # already uncompressed


def test_fix_leaves_other_images_alone(tmp_path):
    image = tmp_path / "x.sqsh"
    image.write_bytes(b"not a squashfs image" * 10)
    assert not squash.fix_single_id_table(image)


def test_every_documented_option_is_translated():
    """Each option the docs' table lists is accepted; one that tar2sqfs gets is named in the error's hint."""
    from tests.helpers.squash_table import documented_invocations

    invocations = documented_invocations()
    assert len(invocations) > 30 and "-comp gzip -Xstrategy filtered,huffman_only" in invocations
    for text in invocations:
        plan = squash.translate_options(text)
        option = text.split()[2] if len(text.split()) > 2 else "-comp"
        without = squash.translate_options(" ".join(text.split()[:2]))
        ignored = plan == without
        assert plan.use_mksquashfs or ignored or f"{option}," in squash.SUPPORTED_HINT, text


@pytest.mark.parametrize("text,extra", [
    ("-comp gzip -Xstrategy filtered", ["filtered"]),
    ("-comp gzip -Xstrategy default,huffman_only,run_length_encoded,fixed", ["default", "huffman", "rle", "fixed"]),
])
def test_gzip_strategies_become_tar2sqfs_flags(text, extra):
    assert squash.translate_options(text).extra == extra


@pytest.mark.parametrize("text", ["-comp gzip -Xstrategy bogus", "-comp gzip -Xstrategy ,", "-comp gzip -Xstrategy"])
def test_bad_gzip_strategy(text):
    with pytest.raises(ConfigError):
        squash.translate_options(text)


def test_every_option_of_the_long_forms_is_known():
    for option in ("-noInodeCompression", "-noDataCompression", "-noFragmentCompression", "-noXattrCompression",
                   "-noIdTableCompression"):
        assert squash.translate_options(f"-comp gzip {option}").use_mksquashfs, option


@pytest.mark.parametrize("text", ["-comp lz4", "  -comp\tzstd -Xcompression-level 3\n", "-b 1M -comp 'xz'",
                                  '-comp "gzip" -Xstrategy filtered', "-comp\\ lz4", "-comp\x0blz4", "", "-comp é"])
def test_options_split_as_shlex_splits_them(text):
    assert squash._split_words(text) == shlex.split(text)


def test_an_unclosed_quote_is_one_line_error():
    with pytest.raises(ConfigError, match="cannot be parsed"):
        squash.translate_options("-comp 'lz4")
