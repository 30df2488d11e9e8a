"""Images from archives and local engines: oci-archive://, docker-archive://, podman://."""

from __future__ import annotations

import shutil

import pytest

from pyenroot.devtools import imagebuilder as ib
from tests.integration.imagecheck import docker_save_tar, oci_layout_tar, squashfs_tree

E = ib.Entry
LOWER = [E("etc", "dir"), E("etc/hostname", data=b"archive\n"), E("gone", data=b"gone")]
UPPER = [E(".wh.gone"), E("top", data=b"top")]


def _check(tree, marker: bytes) -> None:
    assert tree["etc/hostname"].data == b"archive\n"
    assert tree["top"].data == b"top"
    assert "gone" not in tree
    assert tree["marker"].data == marker


def _layers(marker: bytes) -> list[bytes]:
    return [ib.tar_bytes(LOWER), ib.tar_bytes([*UPPER, E("marker", data=marker)])]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_oci_archive(user, compression):
    image = ib.build_image(_layers(compression.encode()), compression=compression, oci=True, cmd=["/bin/true"])
    archive = user.home / "image.oci.tar"
    archive.write_bytes(oci_layout_tar(image, "v1"))
    user.give(archive)
    result = user.pyenroot("import", f"oci-archive://{archive}")
    assert result.returncode == 0, result.stderr
    output = user.home / "image+v1.sqsh" if (user.home / "image+v1.sqsh").exists() else None
    output = output or next(user.home.glob("*.sqsh"))
    tree = squashfs_tree(output)
    _check(tree, compression.encode())
    assert tree["etc/rc"].data.startswith(f"# enroot-provenance: oci-archive://{archive}".encode())


def test_oci_archive_with_ref(user):
    image = ib.build_image(_layers(b"ref"), oci=True)
    archive = user.home / "layout.tar"
    archive.write_bytes(oci_layout_tar(image, "stable"))
    user.give(archive)
    output = user.home / "ref.sqsh"
    result = user.pyenroot("import", "-o", str(output), f"oci-archive://{archive}:stable")
    assert result.returncode == 0, result.stderr
    _check(squashfs_tree(output), b"ref")
    missing = user.pyenroot("import", "-o", str(user.home / "missing.sqsh"), f"oci-archive://{archive}:nope")
    assert missing.returncode != 0 and "nope" in missing.stderr


def test_docker_archive(user):
    archive = user.home / "saved.tar"
    archive.write_bytes(docker_save_tar(_layers(b"docker"), "example/app:1.0", env=["A=1"]))
    user.give(archive)
    output = user.home / "docker.sqsh"
    result = user.pyenroot("import", "-o", str(output), f"docker-archive://{archive}")
    assert result.returncode == 0, result.stderr
    tree = squashfs_tree(output)
    _check(tree, b"docker")
    assert tree["etc/environment"].data == b"A=1\n"


def test_missing_archive(user):
    result = user.pyenroot("import", "-o", str(user.home / "x.sqsh"), f"oci-archive://{user.home}/nothing.tar")
    assert result.returncode != 0
    assert "nothing.tar" in result.stderr and "Traceback" not in result.stderr


def test_load_from_oci_archive(user):
    image = ib.build_image(_layers(b"load"), oci=True)
    archive = user.home / "layout.tar"
    archive.write_bytes(oci_layout_tar(image))
    user.give(archive)
    result = user.pyenroot("load", "-n", "fromarchive", f"oci-archive://{archive}")
    assert result.returncode == 0, result.stderr
    root = user.home / ".local/share/enroot/fromarchive"
    assert (root / "top").read_bytes() == b"top" and not (root / "gone").exists()


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_podman_store(user):
    archive = user.home / "for-podman.tar"
    archive.write_bytes(docker_save_tar(_layers(b"podman"), "localhost/test/pod:v1", cmd=["/bin/sh"]))
    user.give(archive)
    loaded = user.run(["podman", "load", "--quiet", "--input", str(archive)])
    assert loaded.returncode == 0, loaded.stderr
    output = user.home / "pod.sqsh"
    result = user.pyenroot("import", "-o", str(output), "podman://localhost/test/pod:v1")
    assert result.returncode == 0, result.stderr
    tree = squashfs_tree(output)
    _check(tree, b"podman")
    assert tree["etc/rc"].data.startswith(b"# enroot-provenance: podman://localhost/test/pod:v1")
    user.run(["podman", "system", "reset", "--force"])
