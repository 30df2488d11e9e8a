"""The merged stream: layers from files (gzip, zstd, plain), read ahead or not, give the same tar."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from pyenroot.content.model import Descriptor, LocalLayer
from pyenroot.devtools import imagebuilder as ib
from pyenroot.errors import ImageError
from pyenroot.image.merge import Decompressor, ReadAhead, write_merged

E = ib.Entry


def _layer(tmp_path: Path, number: int, entries, compression: str) -> LocalLayer:
    raw = ib.tar_bytes(entries)
    data = gzip.compress(raw, 1) if compression == "gzip" else raw
    path = tmp_path / f"layer{number}"
    path.write_bytes(data)
    return LocalLayer(Descriptor("application/octet-stream", f"sha256:{number:064d}", len(data)), path)


def _layers(tmp_path: Path, compression: str = "gzip") -> list[LocalLayer]:
    bottom = [E("etc", "dir"), E("etc/a", data=b"a" * 5000), E("gone", data=b"x"), E("lib", "dir"),
              E("lib/f", data=b"old"), E("lib/link", "hardlink", link="lib/f")]
    middle = [E(".wh.gone"), E("big", data=os.urandom(3 << 20)), E("lib/f", data=b"new")]
    top = [E("etc/b", data=b"b"), E("sym", "symlink", link="/etc/a")]
    return [_layer(tmp_path, n, entries, compression) for n, entries in enumerate([bottom, middle, top])]


def _merge(layers, **kwargs) -> dict[str, bytes]:
    sink = io.BytesIO()
    result = write_merged(layers, {"etc/rc": b"rc\n"}, sink, decompressor=Decompressor("gzip", 1), **kwargs)
    assert result.entries > 0
    sink.seek(0)
    with tarfile.open(fileobj=sink) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else m.linkname) for m in tar}


@pytest.mark.parametrize("ahead,budget", [(1, 0), (2, 1 << 20), (4, 64 << 20)])
def test_read_ahead_gives_the_same_stream(tmp_path, ahead, budget):
    merged = _merge(_layers(tmp_path), ahead=ahead, read_ahead_budget=budget)
    assert merged["etc/rc"] == b"rc\n" and merged["etc/a"] == b"a" * 5000 and merged["etc/b"] == b"b"
    assert "gone" not in merged and merged["lib/f"] == b"new" and merged["lib/link"] == b"old"
    assert merged["sym"] == "/etc/a" and len(merged["big"]) == 3 << 20


def test_plain_layers_and_futures(tmp_path):
    layers = _layers(tmp_path, "none")
    future: Future = Future()
    future.set_result(layers[0])
    merged = _merge([future, *layers[1:]])
    assert merged["lib/link"] == b"old"


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
def test_zstd_layer(tmp_path):
    path = tmp_path / "z"
    path.write_bytes(ib.compress(ib.tar_bytes([E("z", data=b"zstd")]), "zstd"))
    merged = _merge([LocalLayer(Descriptor("x", "sha256:" + "1" * 64, 0), path)])
    assert merged["z"] == b"zstd"


def test_corrupt_gzip_layer(tmp_path):
    layers = _layers(tmp_path)
    data = bytearray(layers[1].path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layers[1].path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"sha256:0+1"):
        _merge(layers, ahead=2, read_ahead_budget=1 << 20)


def test_read_ahead_reader():
    read_fd, write_fd = os.pipe()
    payload = os.urandom(3 << 20)

    def write() -> None:
        with os.fdopen(write_fd, "wb") as writer:
            writer.write(payload)

    writer = threading.Thread(target=write)
    writer.start()
    reader = ReadAhead(os.fdopen(read_fd, "rb", buffering=0), limit=1 << 20)
    received = bytearray()
    while chunk := reader.read(70_000):
        received += chunk
    writer.join()
    reader.close()
    assert bytes(received) == payload
