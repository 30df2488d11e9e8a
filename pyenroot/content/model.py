"""Values shared by every image source (registry, podman, docker daemon, archives) and the builder."""

from __future__ import annotations

from pathlib import Path

from pyenroot.record import factory, record

TYPE_CHECKING = False  # typing's flag without importing typing (a Slurm step imports as little as it can)

if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object


@record(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about a blob."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    platform: dict | None = None
    urls: tuple[str, ...] = ()


@record
class ResolvedImage:
    """One platform's image, resolved from a URI: its manifest, its config and its layers (bottom first)."""

    source_uri: str  # canonical URI, written as provenance into /etc/rc
    manifest_digest: str
    config: dict  # the image config document (architecture, os, config.Env, ...)
    layers: list[Descriptor] = factory(list)
    reference_digest: str = ""  # what the URI itself resolved to (an index's digest); "" when the same as above


@record(frozen=True)
class LocalLayer:
    """A layer blob available on local disk (usually in the blob cache), still compressed."""

    descriptor: Descriptor
    path: Path


class ProgressReporter(Protocol):
    """Where long work reports progress (a TTY bar, a few log lines, or nothing)."""

    def phase(self, name: str) -> None: ...

    def advance(self, item: str, done: int, total: int | None) -> None: ...


class ImageSource(Protocol):
    """Anything an image can come from: a registry, podman's store, the docker daemon, an archive."""

    def resolve(self, arch: str | None) -> ResolvedImage:
        """Find the image for `arch` (None: this host) and read its config; no layer is fetched yet."""
        ...

    def fetch_layers(self, image: ResolvedImage, progress: ProgressReporter | None = None) -> list[LocalLayer]:
        """Make every layer available on local disk, verified, bottom first."""
        ...
