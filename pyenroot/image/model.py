"""Values shared by every image source (registry, podman, docker daemon, archives) and the builder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about a blob."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    platform: dict | None = None
    urls: tuple[str, ...] = ()


@dataclass
class ResolvedImage:
    """One platform's image, resolved from a URI: its manifest, its config and its layers (bottom first)."""

    source_uri: str  # canonical URI, written as provenance into /etc/rc
    manifest_digest: str
    config: dict  # the image config document (architecture, os, config.Env, ...)
    layers: list[Descriptor] = field(default_factory=list)


@dataclass(frozen=True)
class LocalLayer:
    """A layer blob available on local disk (usually in the blob cache), still compressed."""

    descriptor: Descriptor
    path: Path
