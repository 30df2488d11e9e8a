"""Building an image: the merged layer stream into a squashfs file (tar2sqfs, or mksquashfs over an unpacked
tree) or into a directory (`tar -x`), in a scratch directory that a killed import leaves for the next to remove.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from pyenroot import tools
from pyenroot.config import Settings
from pyenroot.containers.work import WorkKind, clean_stale_work, work_dir
from pyenroot.content.model import LocalLayer, ResolvedImage
from pyenroot.errors import ImageError, StorageError
from pyenroot.image import imagefiles, squash
from pyenroot.image.layerfetch import start_layer_fetch
from pyenroot.image.output import TempOutput
from pyenroot.image.progress import ImportProgress
from pyenroot.image.uri_source import OpenedSource

if TYPE_CHECKING:  # the merge loads only when an image is built (not for a cached one)
    from pyenroot.image.merge import Decompressor, MergeResult


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
    decompressor = _decompressor(settings)
    return write_merged(layers, generated, sink, decompressor=decompressor,
                        workdir=imagefiles.workdir_of(image.config), mtime=_generation_time(), on_layer=on_layer,
                        ahead=ahead, read_ahead_budget=budget,
                        copies=LayerCopies.of(settings, decompressor.gzip_name))


@contextlib.contextmanager
def _extractor(rootfs: Path) -> Iterator[subprocess.Popen]:
    """`tar -x` into an empty directory, fed the merged stream (which never leads through a link)."""
    argv = ["tar", "-x", "-f", "-", "-C", str(rootfs), "--no-same-owner", "--preserve-permissions",
            "--delay-directory-restore", "--warning=no-timestamp"]
    process = tools.spawn(argv, stdin=tools.PIPE, bufsize=1 << 20, many_files=True)
    tools.widen_pipe(process.stdin.fileno())
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


def merge_to_directory(image, layers, settings, arch, progress, rootfs: Path) -> MergeResult:
    with _extractor(rootfs) as tar:
        try:
            return _stream_into(tar.stdin, image, layers, settings, arch, progress)
        except BrokenPipeError:
            pass  # tar stopped reading: its own error is raised when the context ends
    raise ImageError("unpacking the image failed")


# The scratch directory (an engine's saved archive, the unpacked tree of the mksquashfs fallback) is a locked
# work entry like storage's: a SIGKILLed import leaves it unlocked, and the next import or load removes it.
SCRATCH = WorkKind(prefix="pyenroot-import-", new_prefix="pyenroot-new-import-",
                           place="the temporary directory", setting="ENROOT_TEMP_PATH")


@contextlib.contextmanager
def scratch_dir(settings: Settings) -> Iterator[Path]:
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
    if not plan.use_mksquashfs and plan.builds_with_mksquashfs():
        plan.use_mksquashfs = True  # slower (the tree is unpacked first), but the same image
        plan.notes.append("no tar2sqfs")
    if plan.use_mksquashfs:
        progress.note(f"building with mksquashfs ({', '.join(plan.notes)})")
        rootfs = scratch / "rootfs"
        rootfs.mkdir()
        result = merge_to_directory(image, layers, settings, arch, progress, rootfs)
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


def build_into(out: TempOutput, opened: OpenedSource, arch: str | None, plan: squash.SquashPlan,
               settings: Settings, progress, scratch: Path,
               image: ResolvedImage | None) -> tuple[ResolvedImage, MergeResult]:
    """Fetch the layers (held in the blob cache meanwhile) and build the squashfs into `out`, not yet named."""
    with contextlib.ExitStack() as hold:
        image, fetch = start_layer_fetch(opened.source, arch, settings, progress, hold, image)
        try:
            return image, _build_squashfs(image, fetch.layers, settings, arch, progress, out, plan, scratch)
        finally:
            fetch.close()

