"""zstd copies of gzip layers in the blob cache: made on the first import, used by a rebuild (same bytes as a
build from gzip), a damaged one ignored and written again, concurrent imports, prune removes them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from pyenroot.content.blobs import BlobCache
from pyenroot.devtools import imagebuilder as ib
from pyenroot.image.layercopy import CopyRecord
from tests.integration.imagecheck import HTTP, import_as, push, squashfs_tree, uri

E = ib.Entry
# Generated files get this time, so builds compare byte for byte; copies are written whatever the decompressor
# (the default, auto, writes none behind igzip: see the last test).
EPOCH = {"SOURCE_DATE_EPOCH": "1700000000", "PYENROOT_CACHE_LAYER_COPIES": "yes"}


@pytest.fixture(scope="module")
def image(registry, pusher) -> ib.Image:
    return push(pusher, "test/copies", "v1", [[E("data", "dir"), E("data/file", data=os.urandom(300_000))],
                                              [E("data/top", data=b"top" * 1000), E("etc", "dir")]])


def _cache(user) -> BlobCache:
    return BlobCache(user.home / ".cache/enroot")


def _layer_digests(cache: BlobCache) -> list[str]:
    return [d for d in cache.digests() if cache.path(d).read_bytes()[:2] == b"\x1f\x8b"]


def _from_gzip(user, source: str) -> bytes:
    env = {**EPOCH, "PYENROOT_CACHE_LAYER_COPIES": "no", "ENROOT_CACHE_PATH": str(user.home / "gzip-only")}
    result, output = import_as(user, source, "gzip-only.sqsh", env)
    assert result.returncode == 0, result.stderr
    assert not (user.home / "gzip-only/copies").exists() or not list((user.home / "gzip-only/copies").iterdir())
    return output.read_bytes()


def _rebuild(user, source: str, name: str) -> bytes:
    (user.home / name).unlink(missing_ok=True)
    user.run(["rm", "-rf", str(user.home / ".cache/enroot/squashfs")], check=True)  # blobs stay
    result, output = import_as(user, source, name, EPOCH)
    assert result.returncode == 0, result.stderr
    return output.read_bytes()


def _spoil(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_copies_are_made_and_used_for_the_same_image(user, registry, image):
    source = uri(registry, "test/copies", "v1")
    expected = _from_gzip(user, source)
    result, first = import_as(user, source, "first.sqsh", EPOCH)
    assert result.returncode == 0, result.stderr
    assert first.read_bytes() == expected
    cache = _cache(user)
    digests = _layer_digests(cache)
    assert len(digests) == 2
    for digest in digests:
        copy_path, record_path = cache.copy_paths(digest)
        st = copy_path.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (user.uid, 0o600)
        record = CopyRecord.from_json(record_path.read_text())
        assert record is not None and record.size == st.st_size
        _spoil(cache.path(digest))  # from now on only the copies can give the right bytes
    assert _rebuild(user, source, "second.sqsh") == expected


def test_a_damaged_copy_is_ignored_and_written_again(user, registry, image):
    source = uri(registry, "test/copies", "v1")
    expected = _from_gzip(user, source)
    assert import_as(user, source, "first.sqsh", EPOCH)[0].returncode == 0
    cache = _cache(user)
    copy_path, _ = cache.copy_paths(_layer_digests(cache)[0])
    good = copy_path.read_bytes()
    _spoil(copy_path)
    assert _rebuild(user, source, "second.sqsh") == expected
    assert copy_path.read_bytes() == good
    copy_path.write_bytes(good[: len(good) // 2])  # truncated
    assert _rebuild(user, source, "third.sqsh") == expected
    assert copy_path.read_bytes() == good


def test_concurrent_imports_share_the_copies(user, registry, image):
    source = uri(registry, "test/copies", "v1")
    processes = [subprocess.Popen([str(user.wrapper), "import", "-o", str(user.home / f"c{n}.sqsh"), source],
                                  env=user.env(**HTTP, **EPOCH), cwd=user.home, user=user.uid, group=user.gid,
                                  extra_groups=[], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for n in range(4)]
    results = [(p.wait(), p.stderr.read()) for p in processes]
    assert all(rc == 0 for rc, _ in results), results
    assert squashfs_tree(user.home / "c0.sqsh")["data/top"].data == b"top" * 1000
    cache = _cache(user)
    assert not [p for p in cache.copies.iterdir() if p.name.startswith(".")]
    expected = (user.home / "c0.sqsh").read_bytes()
    for digest in _layer_digests(cache):
        _spoil(cache.path(digest))
    assert _rebuild(user, source, "after.sqsh") == expected


def test_prune_counts_and_removes_the_copies(user, registry, image):
    source = uri(registry, "test/copies", "v1")
    assert import_as(user, source, "first.sqsh", EPOCH)[0].returncode == 0
    cache = _cache(user)
    digest = _layer_digests(cache)[0]
    blob_size, copy_size = cache.path(digest).stat().st_size, cache.copy_size(digest)
    assert copy_size > 0
    listing = user.pyenroot("cache", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    sizes = {e["name"]: e["size"] for e in json.loads(listing.stdout)}
    assert sizes[digest] == blob_size + copy_size
    result = user.pyenroot("cache", "prune", "--max-size", "0")
    assert result.returncode == 0, result.stderr
    assert not cache.path(digest).exists()
    assert not any(p.exists() for p in cache.copy_paths(digest))


@pytest.mark.parametrize("gzip_program,copied", [("igzip", False), ("pigz", True)])
def test_auto_writes_copies_only_behind_a_slow_decompressor(user, registry, image, gzip_program, copied):
    if gzip_program == "igzip" and not shutil.which("igzip"):
        pytest.skip("igzip (ISA-L) is not installed")
    source = uri(registry, "test/copies", "v1")
    cache_path = user.home / f"auto-{gzip_program}"
    env = {"PYENROOT_CACHE_LAYER_COPIES": "auto", "ENROOT_GZIP_PROGRAM": gzip_program,
           "ENROOT_CACHE_PATH": str(cache_path)}
    result, _ = import_as(user, source, f"auto-{gzip_program}.sqsh", env)
    assert result.returncode == 0, result.stderr
    copies = list((cache_path / "copies").glob("*.zst")) if (cache_path / "copies").is_dir() else []
    assert bool(copies) == copied
