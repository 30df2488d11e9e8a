"""Manifests and indexes (Docker schema2, OCI), platform names and platform choice.

Pure: bytes and media types in, values out. The client fetches; this module decides.
"""

from __future__ import annotations

import hashlib
import json

from pyenroot.content.model import Descriptor
from pyenroot.errors import ImageError
from pyenroot.record import record
from pyenroot.registry.platforms import Platform, normalize_platform  # noqa: F401 (the module's names too)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
# What we send in Accept: every kind we can read, indexes first (a registry may then pick one for us).
ACCEPT = ", ".join(INDEX_TYPES + MANIFEST_TYPES)

# Layer media type -> compression of the blob.
LAYER_COMPRESSION: dict[str, str] = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    # Deprecated "non-distributable" OCI layers are still plain layers when the registry has the blob.
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
}

@record(frozen=True)
class Manifest:
    """One image manifest: its config blob and its layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@record(frozen=True)
class Index:
    """A manifest list or OCI index: one manifest (or nested index) per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify_digest(data: bytes, expected: str, what: str) -> None:
    """Raise ImageError unless `data` hashes to `expected` (only sha256 is supported)."""
    if not expected.startswith("sha256:"):
        raise ImageError(f"{what}: unsupported digest algorithm in {expected}")
    actual = sha256_digest(data)
    if actual != expected:
        raise ImageError(f"digest mismatch for {what}: expected {expected}, got {actual}",
                         hint="the registry or something between us and it altered the content")


def _descriptor(entry: object, what: str) -> Descriptor:
    if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
        raise ImageError(f"malformed {what}: a descriptor without a digest")
    digest = entry["digest"]
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise ImageError(f"malformed {what}: unsupported digest {digest!r}")
    size = entry.get("size", -1)
    platform = entry.get("platform")
    return Descriptor(media_type=str(entry.get("mediaType", "")), digest=digest,
                      size=size if isinstance(size, int) else -1,
                      platform=platform if isinstance(platform, dict) else None,
                      urls=tuple(entry.get("urls") or ()))


def _load_json(data: bytes, what: str) -> dict:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"malformed {what}: not JSON") from None
    if not isinstance(document, dict):
        raise ImageError(f"malformed {what}: not a JSON object")
    return document


def _kind(document: dict, content_type: str | None) -> str:
    """The media type: the document's own field wins, then Content-Type, then the shape."""
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    header = (content_type or "").split(";")[0].strip()
    if header in MANIFEST_TYPES + INDEX_TYPES + DOCKER_SCHEMA1:
        return header
    if document.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[1]
    if "manifests" in document:
        return OCI_INDEX
    if "layers" in document:
        return OCI_MANIFEST
    return header or "unknown"


def parse_manifest(data: bytes, content_type: str | None = None) -> Manifest | Index:
    """Parse a manifest or an index; unsupported kinds (schema 1, unknown types) fail with a clear error."""
    document = _load_json(data, "manifest")
    kind = _kind(document, content_type)
    if kind in INDEX_TYPES:
        entries = document.get("manifests")
        if not isinstance(entries, list):
            raise ImageError("malformed index: no 'manifests' list")
        return Index(kind, tuple(_descriptor(e, "index") for e in entries))
    if kind in MANIFEST_TYPES:
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise ImageError("malformed manifest: no 'layers' list")
        return Manifest(kind, _descriptor(document.get("config"), "manifest config"),
                        tuple(_descriptor(e, "manifest layer") for e in layers))
    if kind in DOCKER_SCHEMA1:
        raise ImageError("unsupported manifest: Docker schema 1 (deprecated)",
                         hint="push the image again with a current tool to get a schema 2 or OCI manifest")
    raise ImageError(f"unsupported manifest media type: {kind}")


def layer_compression(media_type: str) -> str:
    """'gzip', 'zstd' or 'none' for a layer; unsupported types (encrypted, foreign) raise ImageError."""
    try:
        return LAYER_COMPRESSION[media_type]
    except KeyError:
        raise ImageError(f"unsupported layer media type: {media_type or '(none)'}",
                         hint="supported: tar, tar+gzip and tar+zstd layers (Docker or OCI)") from None


def check_layers(manifest: Manifest) -> None:
    """Every layer must be of a kind we can unpack, and an image needs at least one."""
    if not manifest.layers:
        raise ImageError("malformed manifest: no layers")
    for layer in manifest.layers:
        layer_compression(layer.media_type)


def _platform_of(entry: Descriptor) -> Platform | None:
    p = entry.platform or {}
    if not p.get("architecture") or not p.get("os"):
        return None
    return Platform(str(p["os"]), str(p["architecture"]), p.get("variant") or None)


def _variant_rank(wanted: Platform, offered: Platform) -> int | None:
    """0 = exact variant, 1 = acceptable (unspecified on one side), None = no match."""
    if offered.os != wanted.os or offered.architecture != wanted.architecture:
        return None
    if offered.variant == wanted.variant:
        return 0
    # arm64 without a variant means v8; amd64 variants (v2, v3) are not requested by `uname -m`.
    if wanted.variant is None or offered.variant is None:
        return 1
    if wanted.architecture == "arm64" and {wanted.variant, offered.variant} <= {"v8", "v8.0"}:
        return 0
    return None


def select_platform(index: Index, wanted: Platform) -> Descriptor:
    """The index entry for `wanted` (exact variant preferred); error listing what the index offers."""
    ranked = []
    for position, entry in enumerate(index.manifests):
        offered = _platform_of(entry)
        rank = _variant_rank(wanted, offered) if offered else None
        if rank is not None:
            ranked.append((rank, position, entry))
    if ranked:
        return min(ranked, key=lambda item: item[:2])[2]
    # An index may point to further indexes without a platform of their own: look inside the first one.
    nested = [entry for entry in index.manifests if not _platform_of(entry) and entry.media_type in INDEX_TYPES]
    if nested:
        return nested[0]
    available = sorted({str(p) for p in map(_platform_of, index.manifests) if p and p.os != "unknown"})
    raise ImageError(f"no matching platform for {wanted} in the image index",
                     hint=f"available: {', '.join(available) or 'none'}; choose one with --arch")


def parse_config(data: bytes) -> dict:
    """The image configuration document (architecture, os, config.Env, ...)."""
    return _load_json(data, "image config")
