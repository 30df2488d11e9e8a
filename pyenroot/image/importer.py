"""`import` and `load`: resolve an image, fetch its layers, stream the merged tree into a squashfs image or a
container root filesystem. Nothing half-written is ever visible under the final name.

The orchestration only: the source a URI names is in `uri_source`, the layer downloads in `layerfetch`, the
build in `pipeline`, the output file in `output`, images built before (store and cache) in `cached_images`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pyenroot.config import Settings
from pyenroot.containers.create import create_container, install_rootfs
from pyenroot.containers.names import container_dir, data_path
from pyenroot.containers.work import clean_stale_work, work_dir
from pyenroot.content.model import ResolvedImage
from pyenroot.errors import StorageError
from pyenroot.image import squash
from pyenroot.image.built import BuiltImages
from pyenroot.image.cached_images import StoredImage, build_cached, cached, from_store
from pyenroot.image.layerfetch import start_layer_fetch
from pyenroot.image.output import EXISTING_OUTPUT_HINT, TempOutput, check_output_name, deliver, output_path
from pyenroot.image.pipeline import build_into, merge_to_directory, scratch_dir
from pyenroot.image.progress import ImportProgress, new_progress
from pyenroot.image.uri_source import OpenedSource, open_source
from pyenroot.names import validate_name

if TYPE_CHECKING:
    from pyenroot.image.merge import MergeResult


def import_image(uri: str, output: str | None, arch: str | None, settings: Settings, verbose: int = 0,
                 stream: TextIO | None = None) -> Path:
    """Import URI into a squashfs file (default name from the URI); an existing file is replaced, once the new
    one is complete, only with ENROOT_FORCE_OVERRIDE (as enroot, import has no -f). The image is built in the
    built-image cache and placed from there (or taken from it, built before)."""
    from pyenroot.registry.uri import parse_uri

    parse_uri(uri)  # a bad URI or bad options fail before anything is created
    check_output_name(output)
    plan = squash.translate_options(settings.get("ENROOT_SQUASH_OPTIONS"))
    images = BuiltImages.of(settings)
    problem = images.unusable()
    with new_progress(verbose, stream) as progress, scratch_dir(settings) as scratch, \
            open_source(uri, settings, scratch) as opened:
        if problem:
            progress.warn(f"not using the squashfs cache: {problem}")
        final = output_path(output, opened.default_name)
        replace = settings.flag("ENROOT_FORCE_OVERRIDE")
        if os.path.lexists(final) and not (replace and not os.path.isdir(final)):
            raise StorageError(f"file already exists: {final}", hint=EXISTING_OUTPUT_HINT)
        out = TempOutput(final)  # before any download: an unwritable place fails at once
        try:
            stored = from_store(opened, arch, settings, progress)
            found = None if problem or stored.hit else cached(opened, arch, plan, progress, images, stored.identity)
            built = stored.hit or (found.hit if found else None)
            if built is None and found is not None and images.writable():
                built = build_cached(opened, arch, plan, settings, progress, scratch, images, found)
            if isinstance(built, StoredImage):
                deliver(built.path, out, replace=replace, link=False)
                entries, warnings = built.entry.entries, list(built.entry.warnings)
            elif built is None:  # a cache we may not trust, or only read
                entries, warnings = _import_uncached(opened, arch, plan, settings, progress, scratch, out,
                                                     found.image if found else None, replace=replace)
            else:
                try:
                    deliver(built.path, out, replace=replace)
                finally:
                    built.release()
                entries = built.entry.entries
                warnings = built.result.warnings if built.result else built.entry.warnings
        finally:
            out.discard()
        for warning in warnings:
            progress.warn(warning)
        progress.finish()
        progress.note(f"wrote {final} ({final.stat().st_size / (1 << 20):.1f} MB, {entries} entries)")
    prune_to_limit(settings)
    return final


def _import_uncached(opened, arch, plan, settings, progress, scratch, out: TempOutput,
                     image: ResolvedImage | None, *, replace: bool) -> tuple[int, list[str]]:
    """The build straight into the output (a cache nobody may trust is not written)."""
    _, result = build_into(out, opened, arch, plan, settings, progress, scratch, image)
    out.commit(replace=replace)
    return result.entries, result.warnings


def prune_to_limit(settings: Settings) -> None:
    """PYENROOT_CACHE_MAX_SIZE: after an import, the cache is pruned down to it (least recently used first)."""
    limit = settings.get("PYENROOT_CACHE_MAX_SIZE")
    if limit:
        from pyenroot.image import prune

        prune.prune(settings, prune.Limits(max_size=prune.parse_size(limit, "PYENROOT_CACHE_MAX_SIZE")))


def _load_from_cache(opened: OpenedSource, arch: str | None, settings: Settings, progress: ImportProgress,
                     name: str, force: bool) -> bool:
    """`load` of an image built before: the container is unpacked from the store's or the cache's squashfs, as
    `create` does (no layer is read). False when neither has the image."""
    stored = from_store(opened, arch, settings, progress)
    images = BuiltImages.of(settings)
    if stored.hit is None and images.unusable():
        return False
    plan = squash.translate_options(settings.get("ENROOT_SQUASH_OPTIONS"))
    hit = stored.hit or cached(opened, arch, plan, progress, images, stored.identity).hit
    if hit is None:
        return False
    try:
        create_container(settings, hit.path, name, force=force)
    finally:
        hit.release()
    for warning in hit.entry.warnings:
        progress.warn(warning)
    progress.finish()
    progress.note(f"created container {name}")
    prune_to_limit(settings)
    return True


def load_image(uri: str, name: str | None, force: bool, arch: str | None, settings: Settings, verbose: int = 0,
               stream: TextIO | None = None) -> Path:
    """Import URI straight into the container root filesystem ENROOT_DATA_PATH/NAME (no squashfs in between)."""
    from pyenroot.registry.uri import parse_uri

    parse_uri(uri)
    if name is not None:
        validate_name(name)  # before anything is fetched
    force = force or settings.flag("ENROOT_FORCE_OVERRIDE")
    with new_progress(verbose, stream) as progress, scratch_dir(settings) as scratch, \
            open_source(uri, settings, scratch) as opened:
        default = opened.default_name[:-len(".sqsh")] if opened.default_name.endswith(".sqsh") else opened.default_name
        name = validate_name(name if name is not None else default)
        target = container_dir(settings, name)
        if os.path.lexists(target) and not force:
            raise StorageError(f"container already exists: {name}", hint="use -f to replace it")
        if _load_from_cache(opened, arch, settings, progress, name, force):
            return target
        with contextlib.ExitStack() as hold:
            image, fetch = start_layer_fetch(opened.source, arch, settings, progress, hold)
            base = data_path(settings)
            clean_stale_work(base)
            try:
                with work_dir(base) as work:
                    rootfs = work.path / "rootfs"
                    rootfs.mkdir(mode=0o755)
                    result = merge_to_directory(image, fetch.layers, settings, arch, progress, rootfs)
                    install_rootfs(rootfs, target, force=force)
            finally:
                fetch.close()
        _report(result, progress)
        progress.finish()
        progress.note(f"created container {name}")
    prune_to_limit(settings)
    return target


def _report(result: MergeResult, progress: ImportProgress) -> None:
    for warning in result.warnings:
        progress.warn(warning)
