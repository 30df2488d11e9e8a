"""zstd copies of gzip layers: written on the first merge, used on the next, checked, replaced, pruned."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
from concurrent.futures import Future
from pathlib import Path

import pytest

from pyenroot.content.blobs import BlobCache, hold_lock
from pyenroot.content.model import Descriptor, LocalLayer
from pyenroot.devtools import imagebuilder as ib
from pyenroot.errors import ImageError
from pyenroot.image.layercopy import CopyRecord, LayerCopies, writes_copies
from pyenroot.image.merge import Decompressor, write_merged

pytestmark = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")

E = ib.Entry


def _cached_layers(cache: BlobCache) -> list[LocalLayer]:
    layers = []
    for entries in ([E("etc", "dir"), E("etc/a", data=os.urandom(200_000)), E("lib", "dir"),
                     E("lib/f", data=b"old"), E("lib/link", "hardlink", link="lib/f")],
                    [E("big", data=os.urandom(3 << 20)), E("lib/f", data=b"new")]):
        data = gzip.compress(ib.tar_bytes(entries), 1)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = cache.store(digest, [data])
        layers.append(LocalLayer(Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", digest, len(data)), path))
    return layers


def _merged(layers, copies: LayerCopies | None) -> bytes:
    sink = io.BytesIO()
    write_merged(layers, {"etc/rc": b"rc\n"}, sink, decompressor=Decompressor("gzip", 1), copies=copies)
    return sink.getvalue()


def _spoil(path: Path) -> None:
    """Flip a byte in the middle (a gzip blob keeps its magic, so it is still taken for gzip)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def cache(tmp_path) -> BlobCache:
    return BlobCache(tmp_path / "cache")


def test_copy_is_written_then_used_with_the_same_output(cache):
    layers = _cached_layers(cache)
    copies = LayerCopies(cache)
    from_gzip = _merged(layers, copies=None)
    assert _merged(layers, copies) == from_gzip  # the first merge writes the copies
    for layer in layers:
        copy_path, record_path = cache.copy_paths(layer.descriptor.digest)
        assert copy_path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
        record = CopyRecord.from_json(record_path.read_text())
        assert record is not None and record.blob == layer.descriptor.digest
        assert record.size == copy_path.stat().st_size
        assert oct(copy_path.stat().st_mode & 0o777) == oct(0o600)
    for layer in layers:  # from now on the gzip blobs are not read at all
        _spoil(layer.path)
    assert _merged(layers, copies) == from_gzip
    assert not [p for p in cache.copies.iterdir() if p.name.startswith(".")]


def test_damaged_copy_is_ignored_and_replaced(cache):
    layers = _cached_layers(cache)
    copies = LayerCopies(cache)
    from_gzip = _merged(layers, copies)
    copy_path, record_path = cache.copy_paths(layers[1].descriptor.digest)
    good = copy_path.read_bytes()
    _spoil(copy_path)
    assert copies.open_copy(layers[1]) is None
    assert _merged(layers, copies) == from_gzip
    assert copy_path.read_bytes() == good  # written again from the gzip blob
    record_path.write_text("{not json")
    assert copies.open_copy(layers[1]) is None
    assert _merged(layers, copies) == from_gzip
    assert copies.open_copy(layers[1]) is not None


def test_no_copy_of_a_layer_outside_the_cache_or_when_off(cache, tmp_path):
    layers = _cached_layers(cache)
    outside = tmp_path / "elsewhere"
    shutil.copy(layers[0].path, outside)
    _merged([LocalLayer(layers[0].descriptor, outside)], LayerCopies(cache))
    _merged(layers, copies=None)
    assert not cache.copies.exists() or not list(cache.copies.iterdir())


def test_a_layer_that_fails_leaves_no_copy(cache):
    layers = _cached_layers(cache)
    _spoil(layers[1].path)
    with pytest.raises(Exception, match="corrupt"):
        _merged(layers, LayerCopies(cache))
    assert not cache.copy_paths(layers[1].descriptor.digest)[0].exists()
    assert not [p for p in cache.copies.iterdir() if p.name.startswith(".")]


def test_a_failed_download_of_the_next_layer_leaves_no_partial_copy(cache):
    layers = _cached_layers(cache)
    failed: Future = Future()
    failed.set_exception(ImageError("download failed"))
    with pytest.raises(ImageError, match="download failed"):
        _merged([failed, layers[1]], LayerCopies(cache))
    assert not list(cache.copies.iterdir())


def test_a_copy_being_written_elsewhere_is_left_to_that_writer(cache):
    layers = _cached_layers(cache)
    copies = LayerCopies(cache)
    from_gzip = _merged(layers, copies=None)
    held = [hold_lock(cache.locks / f"{cache.path(layer.descriptor.digest).name}.copy", exclusive=True)
            for layer in layers]
    try:
        assert _merged(layers, copies) == from_gzip
    finally:
        for fd in held:
            os.close(fd)
    assert not list(cache.copies.iterdir())
    assert _merged(layers, copies) == from_gzip
    assert all(copies.open_copy(layer) is not None for layer in layers)


def test_a_killed_writers_partial_copy_is_removed_by_the_next_writer(cache):
    layers = _cached_layers(cache)
    cache.copies.mkdir(parents=True)
    leftover = cache.copies / f".{cache.copy_paths(layers[0].descriptor.digest)[0].name}.abc123.part"
    leftover.write_bytes(b"half")
    _merged(layers, LayerCopies(cache))
    assert not leftover.exists() and LayerCopies(cache).open_copy(layers[0]) is not None


def test_prune_removes_the_copy_with_its_blob(cache):
    layers = _cached_layers(cache)
    _merged(layers, LayerCopies(cache))
    digest = layers[0].descriptor.digest
    assert cache.copy_size(digest) > 0
    assert cache.remove_unused(digest)
    assert not any(p.exists() for p in cache.copy_paths(digest)) and cache.copy_size(digest) == 0


def test_copy_record_parsing():
    record = CopyRecord("sha256:" + "a" * 64, 10, 123)
    assert CopyRecord.from_json(record.to_json()) == record
    for junk in ("", "[]", '{"blob": "x"}', '{"blob": "x", "size": -1, "crc32": 1}'):
        assert CopyRecord.from_json(junk) is None


def test_a_copy_whose_zstd_dies_is_dropped_and_the_layer_still_read(cache, monkeypatch):
    layers = _cached_layers(cache)
    from_gzip = _merged(layers, copies=None)
    from pyenroot.image import layercopy
    monkeypatch.setattr(layercopy, "COMPRESS_ARGV", ("sh", "-c", "head -c 100 > /dev/null; exit 3"))
    assert _merged(layers, LayerCopies(cache)) == from_gzip
    assert all(LayerCopies(cache).open_copy(layer) is None for layer in layers)
    assert not [p for p in cache.copies.iterdir() if p.name.startswith(".")]


def test_an_older_record_with_more_keys_is_still_read():
    text = '{"blob": "sha256:%s", "size": 10, "crc32": 123, "uncompressed": 2048}' % ("a" * 64)
    assert CopyRecord.from_json(text) == CopyRecord("sha256:" + "a" * 64, 10, 123)


@pytest.mark.parametrize("setting,gzip_name,expected", [
    ("auto", "igzip", False), ("auto", "pigz", True), ("auto", "gzip", True), ("yes", "igzip", True),
    ("1", "igzip", True)])
def test_auto_writes_copies_only_behind_a_slow_gzip(setting, gzip_name, expected):
    assert writes_copies(setting, gzip_name) is expected


def test_copies_that_are_not_written_new_are_still_read(cache):
    layers = _cached_layers(cache)
    from_gzip = _merged(layers, copies=None)
    assert _merged(layers, LayerCopies(cache, write_new=False)) == from_gzip
    assert not cache.copies.exists() or not list(cache.copies.glob("*.zst"))
    _merged(layers, LayerCopies(cache))  # writes the copies
    for layer in layers:
        _spoil(layer.path)
    assert _merged(layers, LayerCopies(cache, write_new=False)) == from_gzip


def test_gzip_name_drops_the_directory_and_options():
    assert Decompressor("/usr/bin/igzip -q").gzip_name == "igzip"
    assert Decompressor("").gzip_name == "gzip"
