"""Helpers for import tests: push crafted images, read back what a squashfs image holds."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pyenroot.devtools import imagebuilder as ib

HTTP = {"ENROOT_ALLOW_HTTP": "y"}
_KINDS = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.FIFOTYPE: "fifo",
          tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block"}


@dataclass
class Node:
    kind: str  # file, dir, symlink, hardlink, fifo, char, block
    mode: int
    data: bytes = b""
    link: str = ""


def squashfs_tree(path: Path) -> dict[str, Node]:
    """Every entry of a squashfs image (via sqfs2tar), names without a leading `./`."""
    tar_bytes = subprocess.run(["sqfs2tar", "--no-skip", str(path)], capture_output=True, check=True).stdout
    tree = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar:
            name = member.name.strip("/").removeprefix("./")
            kind = _KINDS.get(member.type, "file")
            data = tar.extractfile(member).read() if member.isfile() else b""
            tree[name] = Node(kind, member.mode, data, member.linkname)
    return tree


def push(pusher: ib.Pusher, repository: str, tag: str, layers: list[list[ib.Entry]], **kwargs) -> ib.Image:
    image = ib.build_image([ib.tar_bytes(entries) for entries in layers], **kwargs)
    pusher.image(repository, tag, image)
    return image


def uri(registry, repository: str, tag: str) -> str:
    return f"docker://{registry.host}#{repository}:{tag}"


def import_as(user, source_uri: str, name: str = "out.sqsh", env: dict | None = None, *extra: str):
    """Run `pyenroot import -o HOME/NAME URI` as the user; return (result, output path)."""
    output = user.home / name
    result = user.pyenroot("import", *extra, "-o", str(output), source_uri, env={**HTTP, **(env or {})})
    return result, output


def real_file(tree: dict[str, Node], path: str) -> bytes:
    """The content at `path`, following a hard link inside the image."""
    node = tree[path]
    if node.kind == "hardlink":
        return real_file(tree, node.link.strip("/").removeprefix("./"))
    assert node.kind == "file", (path, node)
    return node.data


def oci_layout_tar(image: ib.Image, ref_name: str | None = None) -> bytes:
    """An OCI image layout (oci-layout, index.json, blobs/sha256/...) as a tar, like `skopeo copy oci-archive:`."""
    descriptor = image.manifest.descriptor()
    if ref_name:
        descriptor["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    index = {"schemaVersion": 2, "mediaType": ib.OCI_INDEX, "manifests": [descriptor]}
    entries = [ib.Entry("oci-layout", data=b'{"imageLayoutVersion": "1.0.0"}'),
               ib.Entry("index.json", data=json.dumps(index).encode()), ib.Entry("blobs", "dir"),
               ib.Entry("blobs/sha256", "dir")]
    for blob in [image.manifest, image.config, *image.layers]:
        entries.append(ib.Entry(f"blobs/sha256/{blob.digest.split(':')[1]}", data=blob.data))
    return ib.tar_bytes(entries)


def docker_save_tar(layer_tars: list[bytes], repo_tag: str, **config_args) -> bytes:
    """What `docker save` (before docker 25) writes: manifest.json, <id>.json, <id>/layer.tar per layer."""
    diff_ids = [ib.sha256(t) for t in layer_tars]
    config = json.dumps(ib.make_config(diff_ids, **config_args)).encode()
    config_name = ib.sha256(config).split(":")[1] + ".json"
    entries = [ib.Entry(config_name, data=config)]
    layer_names = []
    for layer, diff_id in zip(layer_tars, diff_ids, strict=True):
        directory = diff_id.split(":")[1]
        entries += [ib.Entry(directory, "dir"), ib.Entry(f"{directory}/layer.tar", data=layer)]
        layer_names.append(f"{directory}/layer.tar")
    manifest = [{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]
    entries.append(ib.Entry("manifest.json", data=json.dumps(manifest).encode()))
    return ib.tar_bytes(entries)
