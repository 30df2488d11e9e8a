"""Archive and engine sources: command lines, OCI layout and `docker save` parsing (files in tmp only)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from pyenroot.content.blobs import BlobCache
from pyenroot.devtools import imagebuilder as ib
from pyenroot.errors import ImageError
from pyenroot.image import local_sources


def test_engine_commands():
    assert local_sources.engine_save_argv("podman", "localhost/x:1", Path("/t/o.tar")) == [
        "podman", "save", "--format", "oci-archive", "--output", "/t/o.tar", "localhost/x:1"]
    assert local_sources.engine_save_argv("dockerd", "ubuntu:22.04", Path("/t/o.tar")) == [
        "docker", "save", "--output", "/t/o.tar", "ubuntu:22.04"]


def test_missing_engine_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ImageError, match="docker is not installed"):
        local_sources.save_from_engine("dockerd", "ubuntu", tmp_path)


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _layout(tmp_path: Path, images: dict[str, ib.Image]) -> Path:
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    manifests = []
    for ref, image in images.items():
        descriptor = image.manifest.descriptor(annotations={local_sources.REF_NAME: ref},
                                               platform={"os": "linux", "architecture": "amd64"})
        manifests.append(descriptor)
        for blob in [image.manifest, image.config, *image.layers]:
            files[f"blobs/sha256/{blob.digest.split(':')[1]}"] = blob.data
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": manifests}).encode()
    path = tmp_path / "layout.tar"
    path.write_bytes(_tar(files))
    return path


def _image(marker: bytes) -> ib.Image:
    return ib.build_image([ib.tar_bytes([ib.Entry("m", data=marker)])], oci=True, env=["M=" + marker.decode()])


def test_oci_archive_selects_by_ref_and_caches_layers(tmp_path):
    one, two = _image(b"one"), _image(b"two")
    cache = BlobCache(tmp_path / "cache")
    source = local_sources.OciArchiveSource(_layout(tmp_path, {"one": one, "two": two}), cache, ref="two")
    try:
        image = source.resolve("x86_64")
        assert image.manifest_digest == two.digest
        assert image.config["config"]["Env"] == ["M=two"]
        layers = source.fetch_layers(image)
    finally:
        source.close()
    assert [layer.descriptor.digest for layer in layers] == [two.layers[0].digest]
    assert layers[0].path.read_bytes() == two.layers[0].data


def test_oci_archive_errors(tmp_path):
    cache = BlobCache(tmp_path / "cache")
    path = _layout(tmp_path, {"one": _image(b"one")})
    with pytest.raises(ImageError, match="nope"):
        local_sources.OciArchiveSource(path, cache, ref="nope").resolve(None)
    with pytest.raises(ImageError, match="no image for this platform"):
        local_sources.OciArchiveSource(path, cache).resolve("aarch64")
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"garbage" * 200)
    with pytest.raises(ImageError, match="not a tar archive"):
        local_sources.OciArchiveSource(bad, cache)


def test_docker_archive(tmp_path):
    layer = ib.tar_bytes([ib.Entry("f", data=b"docker")])
    config = json.dumps(ib.make_config([ib.sha256(layer)], cmd=["sh"])).encode()
    manifest = [{"Config": "c.json", "RepoTags": ["example/app:1"], "Layers": ["l1/layer.tar"]}]
    path = tmp_path / "saved.tar"
    path.write_bytes(_tar({"c.json": config, "l1/layer.tar": layer, "manifest.json": json.dumps(manifest).encode()}))
    source = local_sources.DockerArchiveSource(path, BlobCache(tmp_path / "cache"))
    image = source.resolve(None)
    assert image.layers[0].digest == ib.sha256(layer)
    assert image.layers[0].media_type.endswith(".tar")
    layers = source.fetch_layers(image)
    assert layers[0].path.read_bytes() == layer
    assert image.config["config"]["Cmd"] == ["sh"]
    source.close()


def test_oci_archive_platform_and_nested_index(tmp_path):
    amd, arm = _image(b"amd"), _image(b"arm")
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    entries = []
    for image, arch in ((amd, "amd64"), (arm, "arm64")):
        entries.append(image.manifest.descriptor(platform={"os": "linux", "architecture": arch}))
        for blob in [image.manifest, image.config, *image.layers]:
            files[f"blobs/sha256/{blob.digest.split(':')[1]}"] = blob.data
    inner = ib.Blob(ib.OCI_INDEX, json.dumps({"schemaVersion": 2, "manifests": entries}).encode())
    files[f"blobs/sha256/{inner.digest.split(':')[1]}"] = inner.data
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [inner.descriptor()]}).encode()
    path = tmp_path / "nested.tar"
    path.write_bytes(_tar(files))
    cache = BlobCache(tmp_path / "cache")
    assert local_sources.OciArchiveSource(path, cache).resolve("aarch64").manifest_digest == arm.digest
    assert local_sources.OciArchiveSource(path, cache).resolve("x86_64").manifest_digest == amd.digest


@pytest.mark.parametrize("source", [local_sources.DockerArchiveSource, local_sources.OciArchiveSource])
def test_what_is_not_an_archive_file_is_refused_plainly(tmp_path, source):
    cache = BlobCache(tmp_path / "cache")
    text = tmp_path / "text.tar"
    text.write_text("not an archive\n")
    with pytest.raises(ImageError, match=f"^not a tar archive: {text}$"):
        source(text, cache)
    with pytest.raises(ImageError, match=f"^is a directory: {tmp_path}$"):
        source(tmp_path, cache)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for special in (Path("/dev/zero"), fifo):  # read forever, or block: refused before reading
        with pytest.raises(ImageError, match=f"^not a regular file: {special}$"):
            source(special, cache)
