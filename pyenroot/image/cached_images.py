"""Images built before: found in the site's image store or the built-image cache, built into the cache when
missing (one builder per key, the others wait), or added to the store (`store add`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from pyenroot.config import Settings, find_program
from pyenroot.errors import StorageError, UsageError
from pyenroot.image import squash
from pyenroot.image.built import BuildKey, BuiltEntry, BuiltImages, builder_identity, squash_description
from pyenroot.image.progress import ImportProgress, new_progress
from pyenroot.image.sitestore import SiteStore, StoreEntry, TagEntry, entry_name, file_sha256, tag_reference
from pyenroot.record import record

TYPE_CHECKING = False  # typing's flag without importing typing (a Slurm step imports as little as it can)

if TYPE_CHECKING:  # a Slurm step that finds its image loads neither the builder nor the registry client
    from typing import TextIO

    from pyenroot.content.model import ResolvedImage
    from pyenroot.image.merge import MergeResult
    from pyenroot.image.uri_source import OpenedSource
    from pyenroot.registry.uri import ImageRef


class _Recording:
    """The progress a build sees: its warnings are also kept, for the cache entry to repeat on a later hit."""

    def __init__(self, progress: ImportProgress):
        self._progress = progress
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self._progress.warn(message)

    def __getattr__(self, name: str):
        return getattr(self._progress, name)


@record
class BuiltImage:
    """A squashfs in the built-image cache, held (a shared lock on `fd`) until the caller calls `release`."""

    images: BuiltImages
    name: str
    entry: BuiltEntry
    fd: int | None  # None in a cache we only read (no lock can be taken there)
    result: MergeResult | None = None  # when built now: its warnings were shown while building

    @property
    def path(self) -> Path:
        return self.images.image(self.name)

    @property
    def identity(self) -> tuple[str, str]:
        """(the digest the reference resolved to, the provenance URI) it was built from."""
        return self.entry.key.reference_digest, self.entry.key.source_uri

    def release(self) -> None:
        self.images.release(self.name, self.fd)
        self.fd = None


def _platform_label(arch: str | None) -> str:
    """The platform an image is built for, as both caches and the store record it: `os/architecture/variant`."""
    from pyenroot.registry.platforms import normalize_platform

    platform = normalize_platform(arch)
    return f"{platform.os}/{platform.architecture}/{platform.variant or ''}"


def _build_key(reference_digest: str, source_uri: str, arch: str | None, plan: squash.SquashPlan) -> BuildKey:
    mksquashfs = plan.builds_with_mksquashfs()
    tool = find_program("mksquashfs" if mksquashfs else "tar2sqfs")
    return BuildKey(reference_digest=reference_digest, source_uri=source_uri, platform=_platform_label(arch),
                    squash=squash_description(plan) + f" mksquashfs={mksquashfs}",
                    builder=builder_identity(tool, os.environ.get("SOURCE_DATE_EPOCH")))


def _cache_hit(images: BuiltImages, key: BuildKey) -> BuiltImage | None:
    if images.lookup(key) is None:
        return None
    fd = images.hold(key.name)
    entry = images.lookup(key)  # again: pruned or replaced before we held it?
    if entry is None:
        images.release(key.name, fd)
        return None
    images.used(key.name)
    return BuiltImage(images, key.name, entry, fd)


@record
class _Lookup:
    key: BuildKey
    image: ResolvedImage | None  # when resolving was needed to find the key (archives)
    hit: BuiltImage | None


def cached(opened: OpenedSource, arch: str | None, plan: squash.SquashPlan, progress: ImportProgress,
            images: BuiltImages, known: tuple[str, str] | None = None) -> _Lookup:
    """Find the image in the cache. A registry image costs one manifest request (none when pinned by digest,
    or when the store's lookup made it: `known`); an archive is read for its digest."""
    _platform_label(arch)  # a bad -a is a usage error before any request
    image: ResolvedImage | None = None
    identity = getattr(opened.source, "identity", None)
    progress.phase("resolve")
    if known is not None:
        reference_digest, source_uri = known
    elif identity is not None:
        reference_digest, source_uri = identity()
    else:
        image = opened.source.resolve(arch)
        reference_digest, source_uri = image.reference_digest or image.manifest_digest, image.source_uri
    key = _build_key(reference_digest, source_uri, arch, plan)
    return _Lookup(key, image, _cache_hit(images, key))


def build_cached(opened: OpenedSource, arch: str | None, plan: squash.SquashPlan, settings: Settings,
                  progress: ImportProgress, scratch: Path, images: BuiltImages, found: _Lookup) -> BuiltImage:
    """The image built into the cache (under the key's build lock: concurrent builders wait for the first)."""
    from pyenroot.image.output import TempOutput
    from pyenroot.image.pipeline import build_into

    key, image = found.key, found.image
    with images.building(key):
        hit = _cache_hit(images, key)  # built by whoever held the lock before us
        if hit is not None:
            return hit
        if image is None:
            image = opened.source.resolve(arch)
        if image.reference_digest and image.reference_digest != key.reference_digest:
            key = _build_key(image.reference_digest, image.source_uri, arch, plan)  # the tag moved meanwhile
        images.discard(key.name)
        recording = _Recording(progress)
        out = TempOutput(images.image(key.name))
        try:
            image, result = build_into(out, opened, arch, plan, settings, recording, scratch, image)
            os.chmod(out.path, 0o644)  # whatever the umask: an entry others may write is never trusted
            out.commit(replace=True)
        finally:
            out.discard()
        entry = BuiltEntry(key=key, size=images.image(key.name).stat().st_size, entries=result.entries,
                           warnings=[*recording.warnings, *result.warnings],
                           blobs=list(dict.fromkeys(d.digest for d in image.layers)))
        images.add(key, entry)
        fd = images.hold(key.name)
    return BuiltImage(images, key.name, entry, fd, result=result)


# ------------------------------------------------------------------------------------- the site's image store


@record
class StoredImage:
    """A squashfs in the site's image store (PYENROOT_IMAGE_STORE): read only, never held or pruned by users."""

    path: Path
    entry: StoreEntry
    fd: int | None = None  # nothing to hold: only the store's owner removes entries
    result: MergeResult | None = None

    @property
    def identity(self) -> tuple[str, str]:
        return self.entry.reference_digest, self.entry.source_uri

    def release(self) -> None:
        pass


@record
class _StoreLookup:
    hit: StoredImage | None
    identity: tuple[str, str] | None = None  # the registry's answer, when the lookup had to ask (the cache reuses it)


def store_ttl(settings: Settings) -> float:
    """PYENROOT_IMAGE_STORE_TTL: how long a tag resolved by `store add` is taken without asking the registry."""
    from pyenroot.image.prune import parse_age

    return parse_age(settings.get("PYENROOT_IMAGE_STORE_TTL") or "0", "PYENROOT_IMAGE_STORE_TTL")


def _verified_stamps(settings: Settings) -> Path | None:
    """Where this node remembers the store entries whose checksum it read (None: check every time)."""
    from pyenroot import trust

    try:
        runtime = trust.private_dir(settings.path("ENROOT_RUNTIME_PATH"), "the runtime directory")
        return trust.private_dir(runtime / "store-verified", "the runtime directory")
    except (StorageError, OSError):
        return None


def from_store(opened: OpenedSource, arch: str | None, settings: Settings, progress: ImportProgress) -> _StoreLookup:
    """The store's entry for a registry image: a digest-pinned reference asks the registry nothing, a tag that
    `store add` resolved less than PYENROOT_IMAGE_STORE_TTL ago neither; another tag costs one manifest request.
    An untrusted store or entry, or one whose bytes changed, is passed over with one warning line."""
    return _store_lookup(getattr(opened.source, "ref", None), lambda: opened.source.identity(), arch, settings,
                         progress)


def _store_lookup(ref: ImageRef | None, identity: Callable[[], tuple[str, str]], arch: str | None,
                  settings: Settings, progress: ImportProgress, *, resolved: bool = False) -> _StoreLookup:
    """`from_store` for `ref`, whose digest `identity()` asks the registry for (`resolved`: it asks nothing, an
    earlier step of the Slurm job did)."""
    store = SiteStore.of(settings)
    if store is None or ref is None or ref.scheme != "docker":
        return _StoreLookup(None)
    platform = _platform_label(arch)
    ttl = store_ttl(settings)
    problem = store.problem()
    if problem:
        progress.warn(f"not using the image store: {problem}")
        return _StoreLookup(None)
    try:
        index = store.read_index()
    except StorageError as exc:
        progress.warn(f"not using the image store: {exc.message}")
        return _StoreLookup(None)
    known = None
    if ref.digest:
        entry = index.find(ref.digest, platform)
    else:
        entry = None if resolved else index.fresh_tag(tag_reference(ref.registry, ref.repository, ref.tag), platform,
                                                      time.time(), ttl)
        if entry is None:
            if not resolved:
                progress.phase("resolve")
            known = identity()
            entry = index.find(known[0], platform)
    if entry is None:
        return _StoreLookup(None, known)
    problem = store.entry_problem(entry) or store.verify(entry, _verified_stamps(settings))
    if problem:
        progress.warn(f"not using the image store's entry: {problem}")
        return _StoreLookup(None, known)
    return _StoreLookup(StoredImage(store.image(entry.name), entry), known)


def store_add(uri: str, arch: str | None, settings: Settings, verbose: int = 0,
              stream: TextIO | None = None) -> tuple[StoreEntry, bool]:
    """Put URI's image into the site's image store, or, when its digest is there already, record when its tag
    was resolved (a cron job's refresh: one manifest request). (the entry, whether it was built now)"""
    from pyenroot.registry.uri import parse_uri

    ref = parse_uri(uri)
    if ref.scheme != "docker":
        raise UsageError(f"store add: not a registry image: {uri}", hint="the store holds docker:// images")
    store = SiteStore.of(settings)
    if store is None:
        raise UsageError("store: PYENROOT_IMAGE_STORE is not set", hint="set it in enroot.conf or the environment")
    platform = _platform_label(arch)
    from pyenroot.image.pipeline import scratch_dir
    from pyenroot.image.uri_source import open_source

    plan = squash.translate_options(settings.get("ENROOT_SQUASH_OPTIONS"))
    store.prepare_for_writing()
    progress = new_progress(verbose, stream)
    with scratch_dir(settings) as scratch, open_source(uri, settings, scratch) as opened:
        progress.phase("resolve")
        image = opened.source.resolve(arch)
        digest = image.reference_digest or image.manifest_digest
        tag = None if ref.digest else TagEntry(tag_reference(ref.registry, ref.repository, ref.tag), platform,
                                               digest, time.time())
        with store.writing() as index:
            entry = index.find(digest, platform)
            built = entry is None or bool(store.entry_problem(entry) or store.verify(entry, _verified_stamps(settings)))
            if built:
                entry = _build_store_entry(store, opened, image, arch, platform, plan, settings, progress, scratch)
            assert entry is not None
            index.add(entry, tag)
    progress.finish()
    return entry, built


def _build_store_entry(store: SiteStore, opened: OpenedSource, image: ResolvedImage, arch: str | None,
                       platform: str, plan: squash.SquashPlan, settings: Settings, progress: ImportProgress,
                       scratch: Path) -> StoreEntry:
    """Build the image under its final name in images/ (complete before it is named) and record its checksum."""
    from pyenroot.image.output import TempOutput
    from pyenroot.image.pipeline import build_into

    name = entry_name(image.manifest_digest, platform)
    out = TempOutput(store.image(name))
    try:
        recording = _Recording(progress)
        image, result = build_into(out, opened, arch, plan, settings, recording, scratch, image)
        os.chmod(out.path, 0o644)  # whatever the umask: users trust nothing others may write
        fd = os.open(out.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size, checksum = os.fstat(fd).st_size, file_sha256(fd)
        finally:
            os.close(fd)
        out.commit(replace=True)
    finally:
        out.discard()
    return StoreEntry(name=name, reference_digest=image.reference_digest or image.manifest_digest,
                      manifest_digest=image.manifest_digest, platform=platform, source_uri=image.source_uri,
                      size=size, sha256=checksum, entries=result.entries,
                      warnings=(*recording.warnings, *result.warnings), added=time.time())


def build_into_cache(uri: str, arch: str | None, settings: Settings, verbose: int = 0,
                     stream: TextIO | None = None, *, inheritable: bool = False,
                     known: tuple[str, str] | None = None) -> BuiltImage | StoredImage | None:
    """The squashfs of URI in the site's image store, or in the built-image cache (built when missing), held
    until the caller releases it (`inheritable`: by a container started from it, too). None when the cache
    cannot be trusted, or does not have the image and cannot be written. `known`: what the reference resolved
    to before (an earlier step of a Slurm job): an image found by it costs no request and no registry client, as
    does one pinned by digest."""
    from pyenroot.registry.uri import parse_uri, pinned_identity

    ref = parse_uri(uri)
    known = known or pinned_identity(ref)
    plan = squash.translate_options(settings.get("ENROOT_SQUASH_OPTIONS"))
    images = BuiltImages.of(settings)
    with new_progress(verbose, stream) as progress:
        built = _known_image(ref, known, arch, plan, settings, progress, images) if known else None
        if built is None:  # (the store was asked already for what `known` names: once is enough)
            built = _find_or_build(uri, arch, plan, settings, progress, images, ask_store=known is None)
        progress.finish()
    if built is not None and inheritable and built.fd is not None:
        os.set_inheritable(built.fd, True)
    return built


def _known_image(ref: ImageRef, known: tuple[str, str], arch: str | None, plan: squash.SquashPlan,
                 settings: Settings, progress: ImportProgress, images: BuiltImages) -> BuiltImage | StoredImage | None:
    """The store's or the cache's image of what `ref` resolved to before, without opening its source."""
    stored = _store_lookup(ref, lambda: known, arch, settings, progress, resolved=True)
    if stored.hit is not None:
        return stored.hit
    if images.unusable():
        return None
    return _cache_hit(images, _build_key(known[0], known[1], arch, plan))


def _find_or_build(uri: str, arch: str | None, plan: squash.SquashPlan, settings: Settings,
                   progress: ImportProgress, images: BuiltImages, *,
                   ask_store: bool = True) -> BuiltImage | StoredImage | None:
    from pyenroot.image.uri_source import needs_workdir, open_source

    with contextlib.ExitStack() as stack:
        # A scratch directory (and the builder's module) only where the source needs one (an engine saves its
        # image there) or the image is built: a registry image found in a cache needs neither.
        scratch = _scratch(settings, stack) if needs_workdir(uri) else None
        opened = stack.enter_context(open_source(uri, settings, scratch))
        stored = from_store(opened, arch, settings, progress) if ask_store else _StoreLookup(None)
        if stored.hit is not None:
            return stored.hit
        if images.unusable():
            return None
        found = cached(opened, arch, plan, progress, images, stored.identity)
        if found.hit is not None:
            return found.hit
        if not images.writable():
            return None
        return build_cached(opened, arch, plan, settings, progress, scratch or _scratch(settings, stack), images,
                            found)


def _scratch(settings: Settings, stack: contextlib.ExitStack) -> Path:
    from pyenroot.image.pipeline import scratch_dir

    return stack.enter_context(scratch_dir(settings))
