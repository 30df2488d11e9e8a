"""Which image source a URI names: the registry, an engine's saved image, or an archive file. The sources
themselves load only for the scheme asked for (a registry import never loads the archive readers).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pyenroot.config import Settings
from pyenroot.content.blobs import BlobCache
from pyenroot.content.model import ImageSource
from pyenroot.record import record

TYPE_CHECKING = False  # typing's flag without importing typing

if TYPE_CHECKING:
    from pyenroot.image.local_sources import DockerArchiveSource, OciArchiveSource


@record
class OpenedSource:
    source: ImageSource
    default_name: str  # without .sqsh
    arch: str | None


ENGINE_SCHEMES = ("podman", "dockerd")


def needs_workdir(uri: str) -> bool:
    """Whether `open_source` needs a work directory for URI: an engine's image is saved into one."""
    from pyenroot.registry.uri import parse_uri

    return parse_uri(uri).scheme in ENGINE_SCHEMES


@contextlib.contextmanager
def open_source(uri: str, settings: Settings, workdir: Path | None) -> Iterator[OpenedSource]:
    """The ImageSource for a URI (an engine's image is first saved to an archive in `workdir`, which only
    those need: `needs_workdir`)."""
    from pyenroot.registry.uri import parse_uri

    ref = parse_uri(uri)
    name = ref.default_image_name()
    cache = BlobCache.of(settings)
    if ref.scheme == "docker":
        from pyenroot.registry.source import RegistrySource

        yield OpenedSource(RegistrySource(ref, settings), name, None)
        return
    if ref.scheme in ENGINE_SCHEMES:
        if workdir is None:
            raise ValueError(f"open_source: {ref.scheme} images need a work directory")
        image = ref.repository + (f":{ref.tag}" if ref.tag else "") + (f"@{ref.digest}" if ref.digest else "")
        from pyenroot.image.local_sources import DockerArchiveSource, OciArchiveSource, save_from_engine

        archive = save_from_engine(ref.scheme, image, workdir)
        source: OciArchiveSource | DockerArchiveSource
        if ref.scheme == "podman":
            source = OciArchiveSource(archive, cache, uri=ref.canonical())
        else:
            source = DockerArchiveSource(archive, cache, uri=ref.canonical())
    elif ref.scheme == "oci-archive":
        from pyenroot.image.local_sources import OciArchiveSource

        source = OciArchiveSource(Path(os.path.abspath(ref.path or "")), cache, ref=ref.tag)
    else:
        from pyenroot.image.local_sources import DockerArchiveSource

        source = DockerArchiveSource(Path(os.path.abspath(ref.path or "")), cache, ref=ref.tag)
    try:
        yield OpenedSource(source, name, None)
    finally:
        source.close()
