"""`import` and `load`: resolve an image, fetch its layers, stream the merged tree into a squashfs image or a
container root filesystem. Nothing half-written is ever visible under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pyenroot import tools
from pyenroot.config import Settings
from pyenroot.errors import ImageError, StorageError, UsageError
from pyenroot.image import imagefiles, squash
from pyenroot.image.built import (
    BuildKey,
    BuiltEntry,
    BuiltImages,
    builder_identity,
    place_copy,
    squash_description,
)
from pyenroot.image.cache import BlobCache
from pyenroot.image.model import ImageSource, LocalLayer, ResolvedImage
from pyenroot.image.progress import ImportProgress
from pyenroot.image.sitestore import SiteStore, StoreEntry, TagEntry, entry_name, file_sha256, tag_reference
from pyenroot.names import validate_name
from pyenroot.store.create import create_container, install_rootfs
from pyenroot.store.names import container_dir, data_path
from pyenroot.store.work import WorkKind, clean_stale_work, work_dir

if TYPE_CHECKING:  # the merge and the archive sources load only when an image is built (not for a cached one)
    from pyenroot.image.local_sources import DockerArchiveSource, OciArchiveSource
    from pyenroot.image.merge import Decompressor, MergeResult

_O_TMPFILE = getattr(os, "O_TMPFILE", 0o20000000 | os.O_DIRECTORY)


# ------------------------------------------------------------------------------------------ sources


@dataclass
class OpenedSource:
    source: ImageSource
    default_name: str  # without .sqsh
    arch: str | None


@contextlib.contextmanager
def open_source(uri: str, settings: Settings, workdir: Path) -> Iterator[OpenedSource]:
    """The ImageSource for a URI (an engine's image is first saved to an archive in `workdir`)."""
    from pyenroot.registry.uri import parse_uri

    ref = parse_uri(uri)
    name = ref.default_image_name()
    cache = BlobCache.of(settings)
    if ref.scheme == "docker":
        from pyenroot.registry.source import RegistrySource

        yield OpenedSource(RegistrySource(ref, settings), name, None)
        return
    if ref.scheme in ("podman", "dockerd"):
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


# ------------------------------------------------------------------------------------------ output


EXISTING_OUTPUT_HINT = "remove it, choose another name with -o, or set ENROOT_FORCE_OVERRIDE=y to replace it"


class TempOutput:
    """The image being written: an unnamed file (O_TMPFILE) linked under its name only when complete,
    so that a crash, even kill -9, leaves nothing behind. Where the filesystem lacks O_TMPFILE, a hidden
    temporary name in the same directory, removed on failure."""

    def __init__(self, final: Path):
        self.final = final
        self.fd: int | None = None
        self.named: Path | None = None
        try:
            self.fd = os.open(final.parent, _O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise _output_error(exc, final) from None
            if exc.errno == errno.ENOENT:
                raise StorageError(f"directory does not exist: {final.parent}") from None
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
            os.close(fd)
            self.named = Path(name)

    @property
    def path(self) -> Path:
        """A path other processes (tar2sqfs, mksquashfs) can open; they must inherit `pass_fds`."""
        if self.named is not None:
            return self.named
        return Path(f"/proc/self/fd/{self.fd}")

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return () if self.fd is None else (self.fd,)

    def commit(self, *, replace: bool = False) -> None:
        """Give the complete file its final name. An existing file is replaced only with `replace`, and then in
        one rename: a reader sees the old image or the new one, never a part."""
        try:
            if replace:
                if self.named is None:
                    # An unnamed file cannot be renamed over another: it gets a hidden name first (for the
                    # moment between the link and the rename; linkat never follows or replaces what is there).
                    self.named = self.final.parent / f".{self.final.name}.{os.urandom(6).hex()}.partial"
                    self._link(self.named)
                os.replace(self.named, self.final)
                self.named = None
            elif self.named is not None:
                os.link(self.named, self.final)
            else:
                self._link(self.final)
        except FileExistsError:
            raise StorageError(f"file already exists: {self.final}", hint=EXISTING_OUTPUT_HINT) from None
        except OSError as exc:
            raise _output_error(exc, self.final) from None
        self.discard()

    def _link(self, name: Path) -> None:
        # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names the unnamed file; os.link only uses linkat (rather
        # than link, which would link the /proc entry itself) when given a dir_fd.
        parent = os.open(name.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(f"/proc/self/fd/{self.fd}", name.name, dst_dir_fd=parent, follow_symlinks=True)
        finally:
            os.close(parent)

    def discard(self) -> None:
        if self.named is not None:
            squash.remove_quietly(self.named)
            self.named = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _output_error(exc: OSError, path: Path) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"no space left on device: {path}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"cannot write {path}: {exc.strerror}", hint="choose another place with -o")
    return StorageError(f"cannot write {path}: {exc.strerror}")


def check_output_name(output: str | None) -> None:
    """`-o ""` is a mistake (an unset variable, say), not a request for the default name."""
    if output is not None and not output:
        raise UsageError("invalid output file: the name is empty", hint="leave -o out to use the default name")


def output_path(output: str | None, default_name: str) -> Path:
    """Where the image goes: `-o FILE`, or the default name (made from the URI) in the current directory or in
    `-o DIR` (an existing directory, or any path written with a trailing `/`)."""
    check_output_name(output)
    name = default_name if default_name.endswith(".sqsh") else f"{default_name}.sqsh"
    if output is None:
        return Path(os.path.abspath(name))
    if output.endswith("/") or os.path.isdir(output):
        return Path(os.path.abspath(os.path.join(output, name)))
    return Path(os.path.abspath(output))


# ----------------------------------------------------------------------------------------- pipeline


def _generation_time() -> int:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(epoch) if epoch.isdigit() else int(time.time())


# Memory the decompressors of upcoming layers may fill while earlier layers are merged (peak RSS stays
# well under 300 MB whatever the image size).
READ_AHEAD_BUDGET = 128 << 20


def read_ahead_plan(cpus: int) -> tuple[int, int]:
    """(layers decompressed at once, read-ahead memory): with two CPUs or fewer, the merge and tar2sqfs
    keep them busy and only the next layer's decompressor runs ahead (into its pipe)."""
    if cpus <= 2:
        return 1, 0
    return min(cpus - 1, 4), READ_AHEAD_BUDGET


def _decompressor(settings: Settings) -> Decompressor:
    from pyenroot.image.merge import Decompressor

    return Decompressor(gzip=settings.get("ENROOT_GZIP_PROGRAM") or "gzip", threads=settings.max_processors())


def _generated(image: ResolvedImage, arch: str | None, progress: ImportProgress) -> dict[str, bytes]:
    from pyenroot.registry.manifest import normalize_platform

    files, warnings = imagefiles.generated_files(image.config, image.source_uri)
    # A single-platform image is taken as it is, whatever its architecture: say so when it differs.
    warning = imagefiles.architecture_warning(image.config, normalize_platform(arch).architecture)
    if warning:
        warnings.append(warning)
    for warning in warnings:
        progress.warn(warning)
    return files


def _stream_into(sink, image: ResolvedImage, layers: list[LocalLayer | Future], settings: Settings, arch: str | None,
                 progress: ImportProgress) -> MergeResult:
    from pyenroot.image.layercopy import LayerCopies
    from pyenroot.image.merge import write_merged

    generated = _generated(image, arch, progress)

    def on_layer(index: int, total: int, layer: LocalLayer) -> None:
        progress.converting(index, total)

    ahead, budget = read_ahead_plan(settings.max_processors())
    return write_merged(layers, generated, sink, decompressor=_decompressor(settings),
                        workdir=imagefiles.workdir_of(image.config), mtime=_generation_time(), on_layer=on_layer,
                        ahead=ahead, read_ahead_budget=budget, copies=LayerCopies.of(settings))


@contextlib.contextmanager
def _extractor(rootfs: Path) -> Iterator[subprocess.Popen]:
    """`tar -x` into an empty directory, fed the merged stream (which never leads through a link)."""
    argv = ["tar", "-x", "-f", "-", "-C", str(rootfs), "--no-same-owner", "--preserve-permissions",
            "--delay-directory-restore", "--warning=no-timestamp"]
    process = tools.spawn(argv, stdin=tools.PIPE, bufsize=1 << 20, many_files=True)
    try:
        yield process
    except BaseException:
        process.kill()
        process.wait()
        raise
    with contextlib.suppress(BrokenPipeError):
        process.stdin.close()
    rc = process.wait()
    err = process.stderr.read().decode(errors="replace").strip()
    if rc != 0:
        if tools.out_of_space(err):
            raise StorageError(f"no space left on device while unpacking into {rootfs}")
        raise ImageError(f"unpacking the image failed: {(err.splitlines() or ['tar failed'])[-1]}")


def _merge_to_directory(image, layers, settings, arch, progress, rootfs: Path) -> MergeResult:
    with _extractor(rootfs) as tar:
        try:
            return _stream_into(tar.stdin, image, layers, settings, arch, progress)
        except BrokenPipeError:
            pass  # tar stopped reading: its own error is raised when the context ends
    raise ImageError("unpacking the image failed")


class LayerFetch:
    """The layers of an image, fetched in the background, top layer first, while the merge consumes them.

    A source with `fetch_blob` (the registry) gets one task per blob, so the merge of the top layer starts
    as soon as that blob is verified in the cache; other sources fetch everything first.
    """

    def __init__(self, source: ImageSource, image: ResolvedImage, progress: ImportProgress, connections: int):
        self.progress = progress
        self.pool: ThreadPoolExecutor | None = None
        self._started = time.monotonic()
        self._remaining = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reporter = _Stoppable(progress, self._stop)
        fetch_blob = getattr(source, "fetch_blob", None)
        if fetch_blob is None:
            self.layers: list[LocalLayer | Future] = list(source.fetch_layers(image, progress))
            self._summary(image.layers)
            return
        tasks: dict[str, Future] = {}
        workers = min(connections if connections > 0 else len(image.layers), len(image.layers)) or 1
        for descriptor in image.layers:  # the whole size from the start, so that the time left is right at once
            progress.advance(descriptor.digest, 0, descriptor.size if descriptor.size > 0 else None)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="layer")
        for descriptor in reversed(image.layers):  # the merge reads the top layer first
            if descriptor.digest not in tasks:
                tasks[descriptor.digest] = self.pool.submit(self._fetch, fetch_blob, descriptor)
        self._remaining = len(tasks)
        self._tasks = list(tasks.values())
        self.layers = [tasks[d.digest] for d in image.layers]
        for task in self._tasks:  # a task already done runs its callback at once
            task.add_done_callback(lambda done: self._done(image.layers))

    def _fetch(self, fetch_blob, descriptor) -> LocalLayer:
        path = Path(fetch_blob(descriptor, self._reporter))
        if descriptor.size > 0:  # complete also when it came from the cache, which reports nothing
            self.progress.advance(descriptor.digest, descriptor.size, descriptor.size)
        return LocalLayer(descriptor, path)

    def _done(self, descriptors) -> None:
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last and all(not t.cancelled() and t.exception() is None for t in self._tasks):
            self._summary(descriptors)

    def _summary(self, descriptors) -> None:
        self.progress.record("download", time.monotonic() - self._started)
        total = sum(d.size for d in descriptors if d.size and d.size > 0)
        self.progress.note(f"{len(descriptors)} layers, {total / (1 << 20):.1f} MB")

    def close(self) -> None:
        """Stop at once: downloads not started are dropped, running ones end at their next progress report
        (Python waits for the pool's threads before it exits, so a SIGTERM would otherwise wait for them).
        When every download is over, the pool's threads are joined: a start in this process (a Slurm step's)
        can only enter new namespaces without them."""
        self._stop.set()
        if self.pool is not None:
            self.pool.shutdown(wait=all(task.done() for task in self._tasks), cancel_futures=True)


class DownloadStopped(BaseException):
    """Ends a download thread once the import is over; a BaseException so that no retry or mirror fallback
    (`except ImageError`, `except Exception`) takes it for a failed transfer. The blob's cache write unwinds
    and removes its temporary file."""


class _Stoppable:
    """The progress reporter a download sees: it reports every few MiB, and raises once the import is over."""

    def __init__(self, progress: ImportProgress, stop: threading.Event):
        self._progress = progress
        self._stop = stop

    def advance(self, item: str, done: int, total: int | None) -> None:
        if self._stop.is_set():
            raise DownloadStopped()
        self._progress.advance(item, done, total)

    def __getattr__(self, name: str):
        return getattr(self._progress, name)


def _fetch(source: ImageSource, arch: str | None, settings: Settings, progress: ImportProgress,
           hold: contextlib.ExitStack, image: ResolvedImage | None = None) -> tuple[ResolvedImage, LayerFetch]:
    """Resolve (unless done) and start fetching the layers, which stay marked in use until `hold` closes."""
    if image is None:
        progress.phase("resolve")
        image = source.resolve(arch)
    progress.phase("merge")
    hold.enter_context(BlobCache.of(settings).reading(d.digest for d in image.layers))
    return image, LayerFetch(source, image, progress, settings.integer("ENROOT_MAX_CONNECTIONS"))


def _report(result: MergeResult, progress: ImportProgress) -> None:
    for warning in result.warnings:
        progress.warn(warning)


# The scratch directory (an engine's saved archive, the unpacked tree of the mksquashfs fallback) is a locked
# work entry like the store's: a SIGKILLed import leaves it unlocked, and the next import or load removes it.
SCRATCH = WorkKind(prefix="pyenroot-import-", new_prefix="pyenroot-new-import-",
                           place="the temporary directory", setting="ENROOT_TEMP_PATH")


@contextlib.contextmanager
def _scratch(settings: Settings) -> Iterator[Path]:
    base = Path(settings.get("ENROOT_TEMP_PATH") or tempfile.gettempdir())
    clean_stale_work(base, SCRATCH)
    with work_dir(base, SCRATCH) as work:
        yield work.path


# Below this much free space (more than one squashfs data block and its metadata), a squashfs tool's failure is
# taken as a full disk.
_NEARLY_FULL = 1 << 20


def _nearly_full(out: TempOutput) -> bool:
    try:
        st = os.fstatvfs(out.fd) if out.fd is not None else os.statvfs(out.path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _NEARLY_FULL


@contextlib.contextmanager
def _squash_failures(out: TempOutput) -> Iterator[None]:
    """tar2sqfs reports a full disk as `/proc/self/fd/3: finishing data blocks: I/O error.`: when the output's
    file system is full (checked while the partial image still holds its space), say so and name the output."""
    try:
        yield
    except ImageError as exc:
        if "no space left" not in str(exc) and not _nearly_full(out):
            raise
        raise StorageError(f"no space left on device writing {out.final}",
                           hint="free some space there, or write the image elsewhere with -o") from None


def _build_squashfs(image, layers, settings, arch, progress, out: TempOutput, plan: squash.SquashPlan,
                    scratch: Path) -> MergeResult:
    jobs = settings.max_processors()
    if not plan.use_mksquashfs and shutil.which("tar2sqfs") is None:
        plan.use_mksquashfs = True  # slower (the tree is unpacked first), but the same image
        plan.notes.append("no tar2sqfs")
    if plan.use_mksquashfs:
        progress.note(f"building with mksquashfs ({', '.join(plan.notes)})")
        rootfs = scratch / "rootfs"
        rootfs.mkdir()
        result = _merge_to_directory(image, layers, settings, arch, progress, rootfs)
        progress.phase("squash")
        with _squash_failures(out):
            squash.run_mksquashfs(plan, rootfs, out.path, jobs, pass_fds=out.pass_fds)
        return result
    builder = squash.Tar2Sqfs(plan, out.path, jobs, pass_fds=out.pass_fds)
    try:
        result = _stream_into(builder.stdin, image, layers, settings, arch, progress)
    except BrokenPipeError:
        with _squash_failures(out):
            builder.finish()  # raises tar2sqfs's own error
        raise ImageError("building the squashfs image failed") from None
    except BaseException:
        builder.abort()
        raise
    progress.phase("squash")
    with _squash_failures(out):
        builder.finish()
    return result


def _progress(verbose: int, stream: TextIO | None) -> ImportProgress:
    return ImportProgress(stream or sys.stderr, verbose=verbose)


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


@dataclass
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

    def release(self) -> None:
        self.images.release(self.name, self.fd)
        self.fd = None


def _platform_label(arch: str | None) -> str:
    """The platform an image is built for, as both caches and the store record it: `os/architecture/variant`."""
    from pyenroot.registry.manifest import normalize_platform

    platform = normalize_platform(arch)
    return f"{platform.os}/{platform.architecture}/{platform.variant or ''}"


def _build_key(reference_digest: str, source_uri: str, arch: str | None, plan: squash.SquashPlan) -> BuildKey:
    mksquashfs = plan.use_mksquashfs or shutil.which("tar2sqfs") is None
    tool = shutil.which("mksquashfs" if mksquashfs else "tar2sqfs")
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


@dataclass
class _Lookup:
    key: BuildKey
    image: ResolvedImage | None  # when resolving was needed to find the key (archives)
    hit: BuiltImage | None


def _cached(opened: OpenedSource, arch: str | None, plan: squash.SquashPlan, progress: ImportProgress,
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


def _build_cached(opened: OpenedSource, arch: str | None, plan: squash.SquashPlan, settings: Settings,
                  progress: ImportProgress, scratch: Path, images: BuiltImages, found: _Lookup) -> BuiltImage:
    """The image built into the cache (under the key's build lock: concurrent builders wait for the first)."""
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
            image, result = _build_into(out, opened, arch, plan, settings, recording, scratch, image)
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


def _deliver(built: Path, out: TempOutput, *, replace: bool = False, link: bool = True) -> None:
    """The output gets the cached image's bytes: a hard link where the file is ours and on the same filesystem
    (no bytes copied), else a reflink or a copy into the unnamed output file, named when complete. `replace`:
    an existing output is replaced in one rename (ENROOT_FORCE_OVERRIDE). The store's files are never linked
    (`link` off): a user's output must not be a name of the site's image."""
    if link and os.stat(built).st_uid == os.getuid():
        link_name = out.final.with_name(f".{out.final.name}.{os.urandom(6).hex()}.partial") if replace else out.final
        try:
            os.link(built, link_name)
        except FileExistsError:
            raise StorageError(f"file already exists: {out.final}", hint=EXISTING_OUTPUT_HINT) from None
        except OSError:
            pass  # another filesystem, or links not allowed here: copy
        else:
            if replace:
                try:
                    os.replace(link_name, out.final)
                except OSError as exc:
                    squash.remove_quietly(link_name)
                    raise _output_error(exc, out.final) from None
            return
    try:
        fd = out.fd if out.fd is not None else os.open(out.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            place_copy(built, fd)
        finally:
            if fd != out.fd:
                os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(f"no space left on device writing {out.final}",
                               hint="free some space there, or write the image elsewhere with -o") from None
        raise _output_error(exc, out.final) from None
    out.commit(replace=replace)


# ------------------------------------------------------------------------------------- the site's image store


@dataclass
class StoredImage:
    """A squashfs in the site's image store (PYENROOT_IMAGE_STORE): read only, never held or pruned by users."""

    path: Path
    entry: StoreEntry
    fd: int | None = None  # nothing to hold: only the store's owner removes entries
    result: MergeResult | None = None

    def release(self) -> None:
        pass


@dataclass
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


def _from_store(opened: OpenedSource, arch: str | None, settings: Settings, progress: ImportProgress) -> _StoreLookup:
    """The store's entry for a registry image: a digest-pinned reference asks the registry nothing, a tag that
    `store add` resolved less than PYENROOT_IMAGE_STORE_TTL ago neither; another tag costs one manifest request.
    An untrusted store or entry, or one whose bytes changed, is passed over with one warning line."""
    store = SiteStore.of(settings)
    ref = getattr(opened.source, "ref", None)
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
    identity = None
    if ref.digest:
        entry = index.find(ref.digest, platform)
    else:
        entry = index.fresh_tag(tag_reference(ref.registry, ref.repository, ref.tag), platform, time.time(), ttl)
        if entry is None:
            progress.phase("resolve")
            identity = opened.source.identity()
            entry = index.find(identity[0], platform)
    if entry is None:
        return _StoreLookup(None, identity)
    problem = store.entry_problem(entry) or store.verify(entry, _verified_stamps(settings))
    if problem:
        progress.warn(f"not using the image store's entry: {problem}")
        return _StoreLookup(None, identity)
    return _StoreLookup(StoredImage(store.image(entry.name), entry), identity)


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
    plan = squash.translate_options(settings.get("ENROOT_SQUASH_OPTIONS"))
    store.prepare_for_writing()
    progress = _progress(verbose, stream)
    with _scratch(settings) as scratch, open_source(uri, settings, scratch) as opened:
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
    name = entry_name(image.manifest_digest, platform)
    out = TempOutput(store.image(name))
    try:
        recording = _Recording(progress)
        image, result = _build_into(out, opened, arch, plan, settings, recording, scratch, image)
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
                     stream: TextIO | None = None, *, inheritable: bool = False) -> BuiltImage | StoredImage | None:
    """The squashfs of URI in the site's image store, or in the built-image cache (built when missing), held
    until the caller releases it (`inheritable`: by a container started from it, too). None when the cache
    cannot be trusted, or does not have the image and cannot be written."""
    from pyenroot.registry.uri import parse_uri

    parse_uri(uri)
    plan = squash.translate_options(settings.get("ENROOT_SQUASH_OPTIONS"))
    progress = _progress(verbose, stream)
    images = BuiltImages.of(settings)
    with _scratch(settings) as scratch, open_source(uri, settings, scratch) as opened:
        stored = _from_store(opened, arch, settings, progress)
        if stored.hit is not None:
            progress.finish()
            return stored.hit
        if images.unusable():
            return None
        found = _cached(opened, arch, plan, progress, images, stored.identity)
        built = found.hit
        if built is None:
            if not images.writable():
                return None
            built = _build_cached(opened, arch, plan, settings, progress, scratch, images, found)
    if inheritable and built.fd is not None:
        os.set_inheritable(built.fd, True)
    progress.finish()
    return built


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
    with _progress(verbose, stream) as progress, _scratch(settings) as scratch, \
            open_source(uri, settings, scratch) as opened:
        if problem:
            progress.warn(f"not using the squashfs cache: {problem}")
        final = output_path(output, opened.default_name)
        replace = settings.flag("ENROOT_FORCE_OVERRIDE")
        if os.path.lexists(final) and not (replace and not os.path.isdir(final)):
            raise StorageError(f"file already exists: {final}", hint=EXISTING_OUTPUT_HINT)
        out = TempOutput(final)  # before any download: an unwritable place fails at once
        try:
            stored = _from_store(opened, arch, settings, progress)
            found = None if problem or stored.hit else _cached(opened, arch, plan, progress, images, stored.identity)
            built = stored.hit or (found.hit if found else None)
            if built is None and found is not None and images.writable():
                built = _build_cached(opened, arch, plan, settings, progress, scratch, images, found)
            if isinstance(built, StoredImage):
                _deliver(built.path, out, replace=replace, link=False)
                entries, warnings = built.entry.entries, list(built.entry.warnings)
            elif built is None:  # a cache we may not trust, or only read
                entries, warnings = _import_uncached(opened, arch, plan, settings, progress, scratch, out,
                                                     found.image if found else None, replace=replace)
            else:
                try:
                    _deliver(built.path, out, replace=replace)
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


def _build_into(out: TempOutput, opened: OpenedSource, arch: str | None, plan: squash.SquashPlan,
                settings: Settings, progress, scratch: Path,
                image: ResolvedImage | None) -> tuple[ResolvedImage, MergeResult]:
    """Fetch the layers (held in the blob cache meanwhile) and build the squashfs into `out`, not yet named."""
    with contextlib.ExitStack() as hold:
        image, fetch = _fetch(opened.source, arch, settings, progress, hold, image)
        try:
            return image, _build_squashfs(image, fetch.layers, settings, arch, progress, out, plan, scratch)
        finally:
            fetch.close()


def _import_uncached(opened, arch, plan, settings, progress, scratch, out: TempOutput,
                     image: ResolvedImage | None, *, replace: bool) -> tuple[int, list[str]]:
    """The build straight into the output (a cache nobody may trust is not written)."""
    _, result = _build_into(out, opened, arch, plan, settings, progress, scratch, image)
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
    stored = _from_store(opened, arch, settings, progress)
    images = BuiltImages.of(settings)
    if stored.hit is None and images.unusable():
        return False
    plan = squash.translate_options(settings.get("ENROOT_SQUASH_OPTIONS"))
    hit = stored.hit or _cached(opened, arch, plan, progress, images, stored.identity).hit
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
    with _progress(verbose, stream) as progress, _scratch(settings) as scratch, \
            open_source(uri, settings, scratch) as opened:
        default = opened.default_name[:-len(".sqsh")] if opened.default_name.endswith(".sqsh") else opened.default_name
        name = validate_name(name if name is not None else default)
        target = container_dir(settings, name)
        if os.path.lexists(target) and not force:
            raise StorageError(f"container already exists: {name}", hint="use -f to replace it")
        if _load_from_cache(opened, arch, settings, progress, name, force):
            return target
        with contextlib.ExitStack() as hold:
            image, fetch = _fetch(opened.source, arch, settings, progress, hold)
            base = data_path(settings)
            clean_stale_work(base)
            try:
                with work_dir(base) as work:
                    rootfs = work.path / "rootfs"
                    rootfs.mkdir(mode=0o755)
                    result = _merge_to_directory(image, fetch.layers, settings, arch, progress, rootfs)
                    install_rootfs(rootfs, target, force=force)
            finally:
                fetch.close()
        _report(result, progress)
        progress.finish()
        progress.note(f"created container {name}")
    prune_to_limit(settings)
    return target
