"""The built-image cache: an image built before is reused (same bytes, no build, one manifest request), a
different platform or different squash options is not, and a damaged entry is rebuilt."""

from __future__ import annotations

import os

import pytest

from pyenroot.devtools import imagebuilder as ib
from pyenroot.image.built import BuiltImages
from tests.helpers.faultproxy import FaultProxy
from tests.integration.imagecheck import import_as, push, squashfs_tree, uri

E = ib.Entry
EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}  # generated files get this time: builds compare byte for byte


@pytest.fixture
def proxy(registry):
    server = FaultProxy(registry.url).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cached_image(registry, pusher):
    push(pusher, "test/cached", "v1", [[E("data", "dir"), E("data/file", data=b"bottom")],
                                       [E("data/top", data=b"top" * 1000)]])
    return "test/cached"


def entries_of(user) -> list:
    return BuiltImages(user.home / ".cache/enroot").entries()


def test_a_cached_import_reuses_the_built_image(user, proxy, cached_image):
    source = f"docker://{proxy.host}#{cached_image}:v1"
    result, first = import_as(user, source, "first.sqsh", EPOCH)
    assert result.returncode == 0, result.stderr
    manifests, blobs = proxy.count("GET", "/manifests/"), proxy.count("GET", "/blobs/")
    result, second = import_as(user, source, "second.sqsh", EPOCH)
    assert result.returncode == 0, result.stderr
    cached_report = result.stderr.replace("second.sqsh", "fresh.sqsh")
    assert proxy.count("GET", "/manifests/") - manifests == 1
    assert proxy.count("GET", "/blobs/") == blobs
    (name, entry, _), = entries_of(user)
    cached = BuiltImages(user.home / ".cache/enroot").image(name)
    # Not built again: the output is the cache's own file (a hard link here), not a new one.
    assert os.stat(second).st_ino == os.stat(cached).st_ino
    assert second.read_bytes() == first.read_bytes()
    # ...and the same bytes as a build that never saw the cache.
    result, fresh = import_as(user, source, "fresh.sqsh", {**EPOCH, "ENROOT_CACHE_PATH": str(user.home / "other")})
    assert result.returncode == 0, result.stderr
    assert fresh.read_bytes() == second.read_bytes()
    assert os.stat(fresh).st_ino != os.stat(second).st_ino
    assert f", {entry.entries} entries)" in result.stderr
    assert cached_report.splitlines()[-1] == result.stderr.splitlines()[-1]  # what the user reads is the same


def test_a_different_platform_is_not_reused(user, registry, pusher):
    images = {("linux", arch, None): ib.build_image([ib.tar_bytes([E("arch", data=arch.encode())])], arch=arch,
                                                    oci=True) for arch in ("amd64", "arm64")}
    pusher.index("test/cached-multi", "v1", ib.build_index(images, oci=True), list(images.values()))
    source = uri(registry, "test/cached-multi", "v1")
    for arch in ("x86_64", "aarch64"):
        result, _ = import_as(user, source, f"{arch}.sqsh", None, "--arch", arch)
        assert result.returncode == 0, result.stderr
    assert squashfs_tree(user.home / "x86_64.sqsh")["arch"].data == b"amd64"
    assert squashfs_tree(user.home / "aarch64.sqsh")["arch"].data == b"arm64"
    assert len(entries_of(user)) == 2


def test_different_squash_options_are_not_reused(user, registry, cached_image):
    source = uri(registry, cached_image, "v1")
    result, default = import_as(user, source, "default.sqsh")
    assert result.returncode == 0, result.stderr
    result, gzip = import_as(user, source, "gzip.sqsh", {"ENROOT_SQUASH_OPTIONS": "-comp gzip -b 65536"})
    assert result.returncode == 0, result.stderr
    assert os.stat(default).st_ino != os.stat(gzip).st_ino
    assert default.read_bytes()[20:22] != gzip.read_bytes()[20:22]  # the superblock's compressor id
    assert len(entries_of(user)) == 2


@pytest.mark.parametrize("damage", ["truncate", "magic"])
def test_a_damaged_entry_is_detected_and_rebuilt(user, registry, cached_image, damage):
    source = uri(registry, cached_image, "v1")
    result, first = import_as(user, source, "first.sqsh", EPOCH)
    assert result.returncode == 0, result.stderr
    expected = first.read_bytes()
    (name, _, _), = entries_of(user)
    cached = BuiltImages(user.home / ".cache/enroot").image(name)
    os.unlink(first)  # the output shares the entry's inode: keep the damage to the cache
    with open(cached, "r+b") as handle:
        if damage == "truncate":
            handle.truncate(len(expected) // 2)
        else:
            handle.write(b"XXXX")
    result, second = import_as(user, source, "second.sqsh", EPOCH)
    assert result.returncode == 0, result.stderr
    assert second.read_bytes() == expected
    assert BuiltImages(user.home / ".cache/enroot").image(name).read_bytes() == expected


def test_load_of_an_image_built_before_unpacks_the_cached_image(user, registry, cached_image):
    source = uri(registry, cached_image, "v1")
    result, _ = import_as(user, source, "first.sqsh")
    assert result.returncode == 0, result.stderr
    assert len(entries_of(user)) == 1
    blobs = user.home / ".cache/enroot/blobs/sha256"
    for blob in blobs.iterdir():  # the layers are not needed any more: the image is unpacked from the cache
        blob.unlink()
    done = user.pyenroot("load", "-n", "loaded", source, env={"ENROOT_ALLOW_HTTP": "y"})
    assert done.returncode == 0, done.stderr
    rootfs = user.home / ".local/share/enroot/loaded"
    assert (rootfs / "data/top").read_bytes() == b"top" * 1000
    assert (rootfs / "etc/rc").read_text().startswith(f"# enroot-provenance: {source}\n")
    assert not list(blobs.iterdir())
