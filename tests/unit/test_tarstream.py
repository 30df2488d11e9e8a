"""The merge's own tar reader and writer agree with Python's tarfile on every header form layers use."""

from __future__ import annotations

import io
import tarfile

import pytest

from pyenroot.errors import ImageError
from pyenroot.image import tarstream

NAMES = ["short", "dir/" * 30 + "long-path", "a" * 99, "a" * 101, "x/" + "b" * 150, "ünïcödé/名前", "p" * 300]


def _archive(fmt: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for number, name in enumerate(NAMES):
            info = tarfile.TarInfo(name)
            data = name.encode() * 3
            info.size, info.mode, info.mtime = len(data), 0o640, 1_600_000_000 + number
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "t/" * 80 + "target"
        tar.addfile(link)
        d = tarfile.TarInfo("d")
        d.type, d.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(d)
        if fmt == tarfile.PAX_FORMAT:
            x = tarfile.TarInfo("with-xattr")
            x.pax_headers = {"SCHILY.xattr.user.k": "v"}
            tar.addfile(x, io.BytesIO(b""))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reader_matches_tarfile(fmt):
    data = _archive(fmt)
    reader = tarstream.TarReader(io.BufferedReader(io.BytesIO(data)), "test")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = tar.getmembers()
    seen = []
    while (member := reader.next()) is not None:
        sink = io.BytesIO()
        if member.kind == "file":
            reader.copy_data(member, sink)
        seen.append((member, sink.getvalue()[:member.size]))
    assert [m.name.rstrip("/") for m, _ in seen] == [e.name for e in expected]
    for (member, content), info in zip(seen, expected, strict=True):
        assert member.mode == info.mode and member.mtime == info.mtime and member.linkname == info.linkname
        if member.kind == "file":
            assert content == info.name.encode() * 3 or info.name == "with-xattr"
    if fmt == tarfile.PAX_FORMAT:
        assert seen[-1][0].xattrs == {"user.k": "v"}


def test_writer_read_back_by_tarfile():
    out = io.BytesIO()
    for name in NAMES:
        out.write(tarstream.header_bytes(name, "file", mode=0o755, mtime=5, size=3))
        out.write(b"abc" + bytes(509))
    out.write(tarstream.header_bytes("l", "symlink", mode=0o777, mtime=5, linkname="z" * 200))
    out.write(tarstream.header_bytes("h", "hardlink", mode=0o644, mtime=5, linkname=NAMES[3]))
    out.write(tarstream.header_bytes("x", "file", mode=0o644, mtime=5, xattrs={"user.a": "1 2"}))
    out.write(tarstream.end_of_archive())
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [*NAMES, "l", "h", "x"]
    assert all(m.uid == 0 and m.gid == 0 for m in members)
    assert members[0].mode == 0o755 and members[0].size == 3
    assert members[len(NAMES)].linkname == "z" * 200
    assert members[-1].pax_headers["SCHILY.xattr.user.a"] == "1 2"


def test_corrupt_header_is_an_image_error():
    reader = tarstream.TarReader(io.BufferedReader(io.BytesIO(b"garbage" * 200)), "layer x")
    with pytest.raises(ImageError, match="layer x is not a valid tar archive"):
        reader.next()


def test_truncated_data_is_an_image_error():
    data = _archive(tarfile.PAX_FORMAT)[:1500]
    reader = tarstream.TarReader(io.BufferedReader(io.BytesIO(data)), "layer y")
    with pytest.raises(ImageError, match="unexpected end"):
        while (member := reader.next()) is not None:
            reader.copy_data(member, io.BytesIO())
