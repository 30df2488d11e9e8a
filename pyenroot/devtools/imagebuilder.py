"""Build OCI / Docker images byte by byte and push them through the registry's v2 HTTP API.

Tests use it to craft exact edge cases: chosen tar entries (whiteouts, hostile paths, links), layer
compression (gzip, zstd, none), Docker schema2 or OCI manifests, manifest lists / OCI indexes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import requests

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    """One tar member. kind: file, dir, symlink, hardlink, char, block, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int | None = None
    link: str = ""
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    xattrs: dict[str, str] = field(default_factory=dict)


_KINDS = {
    "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE,
}


def tar_bytes(entries: list[Entry]) -> bytes:
    """An uncompressed tar stream holding exactly `entries`, in order (PAX format, so xattrs fit)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _KINDS[e.kind]
            info.mode = e.mode if e.mode is not None else (0o755 if e.kind == "dir" else 0o644)
            info.uid, info.gid, info.mtime = e.uid, e.gid, e.mtime
            info.linkname = e.link
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def tar_of_directory(root: Path) -> bytes:
    """A tar of a directory tree with names relative to it (`./bin/sh` style), owned by root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False, filter=reset)
    return buffer.getvalue()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "none":
        return data
    if kind == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if kind == "zstd":
        return subprocess.run(["zstd", "-q", "-1", "-c"], input=data, capture_output=True, check=True).stdout
    raise ValueError(kind)


@dataclass
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


@dataclass
class Image:
    """A single-platform image: config + layers + manifest, ready to push."""

    config: Blob
    layers: list[Blob]
    manifest: Blob
    diff_ids: list[str]

    @property
    def digest(self) -> str:
        return self.manifest.digest


def make_config(diff_ids: list[str], *, arch: str = "amd64", os_name: str = "linux", env: list[str] | None = None,
                entrypoint: list[str] | None = None, cmd: list[str] | None = None, workdir: str | None = None,
                labels: dict[str, str] | None = None, volumes: list[str] | None = None,
                variant: str | None = None) -> dict:
    config: dict = {"Env": env if env is not None else [DEFAULT_PATH]}
    if entrypoint is not None:
        config["Entrypoint"] = entrypoint
    if cmd is not None:
        config["Cmd"] = cmd
    if workdir is not None:
        config["WorkingDir"] = workdir
    if labels:
        config["Labels"] = labels
    if volumes:
        config["Volumes"] = {v: {} for v in volumes}
    document = {"architecture": arch, "os": os_name, "config": config,
                "rootfs": {"type": "layers", "diff_ids": diff_ids}, "created": "2024-01-01T00:00:00Z"}
    if variant:
        document["variant"] = variant
    return document


def build_image(layer_tars: list[bytes], *, compression: str = "gzip", oci: bool = False, **config_args) -> Image:
    """Compress each uncompressed layer tar, write a config and a manifest (Docker schema2 or OCI)."""
    if not oci and compression != "gzip":
        raise ValueError("Docker schema2 layers are gzip; use oci=True for zstd or uncompressed layers")
    layer_type = OCI_LAYER[compression] if oci else DOCKER_LAYER_GZIP
    layers = [Blob(layer_type, compress(t, compression)) for t in layer_tars]
    diff_ids = [sha256(t) for t in layer_tars]
    config = Blob(OCI_CONFIG if oci else DOCKER_CONFIG,
                  json.dumps(make_config(diff_ids, **config_args), sort_keys=True).encode())
    manifest_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    document = {"schemaVersion": 2, "mediaType": manifest_type, "config": config.descriptor(),
                "layers": [layer.descriptor() for layer in layers]}
    return Image(config, layers, Blob(manifest_type, json.dumps(document, indent=1).encode()), diff_ids)


def build_index(images: dict[tuple[str, str, str | None], Image], *, oci: bool = True,
                extra_manifests: list[dict] | None = None) -> Blob:
    """A manifest list / OCI index over images keyed by (os, architecture, variant)."""
    entries = []
    for (os_name, arch, variant), image in images.items():
        platform = {"os": os_name, "architecture": arch}
        if variant:
            platform["variant"] = variant
        entries.append(image.manifest.descriptor(platform=platform))
    entries.extend(extra_manifests or [])
    media_type = OCI_INDEX if oci else DOCKER_LIST
    return Blob(media_type, json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}).encode())


class Pusher:
    """Pushes blobs and manifests to a registry through the v2 API."""

    def __init__(self, base_url: str, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()

    def blob(self, repository: str, blob: Blob) -> None:
        head = self.session.head(f"{self.base_url}/v2/{repository}/blobs/{blob.digest}")
        if head.status_code == 200:
            return
        start = self.session.post(f"{self.base_url}/v2/{repository}/blobs/uploads/")
        start.raise_for_status()
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.base_url + location
        separator = "&" if "?" in location else "?"
        put = self.session.put(f"{location}{separator}digest={blob.digest}", data=blob.data,
                               headers={"Content-Type": "application/octet-stream"})
        put.raise_for_status()

    def manifest(self, repository: str, reference: str, blob: Blob) -> None:
        response = self.session.put(f"{self.base_url}/v2/{repository}/manifests/{reference}", data=blob.data,
                                    headers={"Content-Type": blob.media_type})
        response.raise_for_status()

    def image(self, repository: str, tag: str, image: Image) -> str:
        """Push an image under a tag; returns the manifest digest."""
        for blob in [image.config, *image.layers]:
            self.blob(repository, blob)
        self.manifest(repository, tag, image.manifest)
        return image.digest

    def index(self, repository: str, tag: str, index: Blob, images: list[Image]) -> str:
        for image in images:
            for blob in [image.config, *image.layers]:
                self.blob(repository, blob)
            self.manifest(repository, image.digest, image.manifest)
        self.manifest(repository, tag, index)
        return index.digest
