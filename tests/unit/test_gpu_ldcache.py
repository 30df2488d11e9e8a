"""ld.so.cache reading and writing, byte for byte as glibc's loader expects."""

import struct

import pytest

from pyenroot.gpu import ldcache
from pyenroot.gpu.ldcache import CacheEntry


def test_libcmp_compares_digit_runs_as_numbers():
    assert ldcache.libcmp("libfoo.so.10", "libfoo.so.9") > 0
    assert ldcache.libcmp("libfoo.so.1", "libfoo.so.1") == 0
    assert ldcache.libcmp("libz.so", "libz3.so") < 0  # a digit sorts after any letter or dot
    assert ldcache.libcmp("liba.so", "libb.so") < 0
    assert ldcache.libcmp("libc.so.6", "libc.so") > 0


def test_build_then_parse_round_trip():
    entries = [CacheEntry("libz.so.1", "/lib/libz.so.1", 0x0303),
               CacheEntry("libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1", 0x0303),
               CacheEntry("libcuda.so.1", "/usr/local/nvidia/lib/libcuda.so.1", 0x0003),
               CacheEntry("libz.so.1", "/lib/glibc-hwcaps/x86-64-v3/libz.so.1", 0x0303,
                          ldcache.HWCAP_EXTENSION, "x86-64-v3")]
    data = ldcache.build(entries)
    assert data.startswith(ldcache.MAGIC_NEW)
    parsed = ldcache.parse(data)
    # Sorted for the loader's binary search: names descending, higher flags first, hwcaps entries first.
    assert [(e.name, e.flags, e.hwcaps_subdir) for e in parsed] == [
        ("libz.so.1", 0x0303, "x86-64-v3"), ("libz.so.1", 0x0303, None),
        ("libcuda.so.1", 0x0303, None), ("libcuda.so.1", 0x0003, None)]
    assert parsed[0].path == "/lib/glibc-hwcaps/x86-64-v3/libz.so.1"
    assert ldcache.parse(ldcache.build(parsed)) == parsed


def test_header_fields():
    data = ldcache.build([CacheEntry("libcuda.so.1", "/x/libcuda.so.1", 0x0303)])
    magic, count, strings, flags, extension = struct.unpack_from("<20sIIB3xI12x", data)
    assert (magic, count, flags) == (ldcache.MAGIC_NEW, 1, 2)
    assert strings == len(b"libcuda.so.1\0/x/libcuda.so.1\0")
    assert extension % 4 == 0 and struct.unpack_from("<I", data, extension)[0] == ldcache.EXTENSION_MAGIC


def test_old_format_prefix_is_skipped():
    new = ldcache.build([CacheEntry("libm.so.6", "/lib/libm.so.6", 0x0303)])
    old = ldcache.MAGIC_OLD + b"\0" + struct.pack("<I", 1) + b"\0" * 12  # one old entry of 12 bytes
    old += b"\0" * (-len(old) % 8)
    assert [e.name for e in ldcache.parse(old + new)] == ["libm.so.6"]


def test_merged_adds_and_replaces():
    image = ldcache.build([CacheEntry("libc.so.6", "/lib/libc.so.6", 0x0303),
                           CacheEntry("libcuda.so.1", "/usr/lib/stale/libcuda.so.1", 0x0303)])
    result = ldcache.parse(ldcache.merged(image, [CacheEntry("libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1",
                                                             0x0303)]))
    assert {(e.name, e.path) for e in result} == {("libc.so.6", "/lib/libc.so.6"),
                                                  ("libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1")}
    assert [e.name for e in ldcache.parse(ldcache.merged(b"garbage", []))] == []
    assert [e.name for e in ldcache.parse(ldcache.merged(None, result))] == ["libcuda.so.1", "libc.so.6"]


@pytest.mark.parametrize("data", [b"", b"glibc-ld.so.cache1.1", ldcache.MAGIC_NEW + b"\xff" * 40])
def test_malformed_caches_are_rejected(data):
    with pytest.raises(ldcache.CacheFormatError):
        ldcache.parse(data)
