"""A bundle's runtime: what runs when a user executes a bundle. The shell header has unpacked everything but the
image into a private directory and calls `main`, with the system's python3 and only the standard library on the
path (`python3 -I -S`): nothing here may need a third-party module.

Without --keep the image is unpacked into a locked work entry of ENROOT_TEMP_PATH, removed when the container
exits; with --keep (or --extract) into the bundle's target directory, which must not exist yet and appears
complete or not at all.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyenroot import cli, cliparser
from pyenroot.bundle import model
from pyenroot.config import PACKAGE_DATA, Settings, load_settings
from pyenroot.containers.create import install_rootfs, unpack_rootfs
from pyenroot.containers.work import DATA_WORK, WorkKind, clean_stale_work, work_dir
from pyenroot.errors import ImageError, StorageError
from pyenroot.image.progress import ImportProgress

ROOTFS_WORK = WorkKind(prefix="pyenroot-bundle-rootfs-", new_prefix="pyenroot-new-bundle-rootfs-",
                               place="the temporary directory", setting="ENROOT_TEMP_PATH")
UNPACKERS = ("unsquashfs", "rdsquashfs")


def main(argv: list[str]) -> int:
    """argv: the runtime directory, the bundle file, the archive's offset in it, then the user's arguments."""
    runtime, bundle, offset, *rest = argv
    owner = os.getpid()
    debug = os.environ.get("PYENROOT_DEBUG") == "1"
    try:
        return cli.run_guarded(lambda: _run(Path(runtime), Path(bundle), int(offset), rest), lambda: debug)
    finally:
        if os.getpid() == owner:  # not in the container's process, should it ever get here
            shutil.rmtree(runtime, ignore_errors=True)


def parser(prog: str, info: model.BundleInfo) -> cliparser.Parser:
    from pyenroot.commands import start

    result = cliparser.Parser(prog=prog, description=f"A pyenroot bundle of {info.image_name} ({info.description}): it "
                        "unpacks its image and starts it as a container, with the command given or the image's.")
    result.add_argument("-i", "--info", action="store_true", help="print what the bundle holds and needs, and exit")
    result.add_argument("-k", "--keep", action="store_true",
                        help=f"unpack into the target directory {info.target!r} (which must not exist) and keep it")
    result.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    result.add_argument("-v", "--verify", action="store_true",
                        help="check that this machine can run the bundle, and exit")
    result.add_argument("-x", "--extract", action="store_true", help="unpack into the target directory and exit")
    start.add_container_options(result)
    start.add_command_argument(result)
    return result


def runtime_settings(runtime: Path, info: model.BundleInfo, environ: dict[str, str]) -> Settings:
    """The settings of this machine's environment, with the configuration directories that the bundle carries
    (built-in, system, and with --all the user's) and, as enroot does, the settings it recorded on top."""
    env = {**environ,
           "ENROOT_LIBRARY_PATH": str(PACKAGE_DATA),
           "ENROOT_SYSCONF_PATH": str(runtime / model.SYSTEM_CONFIG_DIR),
           "ENROOT_CONFIG_PATH": str(runtime / model.USER_CONFIG_DIR)}
    settings = load_settings(env)
    return settings.overridden(**info.settings) if info.settings else settings


def _run(runtime: Path, bundle: Path, offset: int, argv: list[str]) -> int:
    info = model.BundleInfo.from_json((runtime / model.INFO_FILE).read_text())
    args = parser(bundle.name, info).parse_args(argv)
    if args.info:
        print(model.describe(info))
        return 0
    settings = runtime_settings(runtime, info, dict(os.environ))
    if args.verify:
        return verify(settings)
    if not any(shutil.which(tool) for tool in UNPACKERS):
        raise ImageError("unsquashfs is not installed: the bundle unpacks its image with it (or rdsquashfs)",
                         hint="install squashfs-tools")
    progress = ImportProgress(io.StringIO() if args.quiet else sys.stderr)
    if args.keep or args.extract:
        target = Path(os.path.realpath(info.target))
        if os.path.lexists(target):
            raise StorageError(f"the bundle's target directory already exists: {target}",
                               hint="remove it, or run the bundle without --keep")
        if not os.path.isdir(target.parent):
            raise StorageError(f"cannot unpack into {target}: no such directory {target.parent}")
        with unpacked(bundle, offset, target.parent, DATA_WORK, settings, progress) as rootfs:
            install_rootfs(rootfs, target, force=False)
        if args.extract:
            progress.note(f"unpacked into {target}")
            return 0
        return run_container(args, settings, target)
    base = Path(settings.get("ENROOT_TEMP_PATH") or tempfile.gettempdir())
    with unpacked(bundle, offset, base, ROOTFS_WORK, settings, progress) as rootfs:
        return run_container(args, settings, rootfs)


@contextmanager
def unpacked(bundle: Path, offset: int, base: Path, kind: WorkKind, settings: Settings,
             progress: ImportProgress) -> Iterator[Path]:
    """The bundle's image unpacked into a new directory in a work entry of `base` (removed afterwards, unless
    the caller renamed the directory away). SIGTERM unwinds the unpacking, so that nothing is left of it."""
    clean_stale_work(base, kind)
    with cli.sigterm_unwinds(), work_dir(base, kind) as work:
        image = work.path / model.IMAGE_FILE
        progress.phase("extract")
        copy_image(bundle, offset, image)
        progress.phase("unpack")
        rootfs = work.path / "rootfs"
        unpack_rootfs(image, rootfs, settings.max_processors(), work.lock_fd, bundle.name)
        image.unlink()
        progress.finish()
        yield rootfs


def copy_image(bundle: Path, offset: int, dest: Path) -> None:
    """Copy the image out of the bundle's archive (found with tarfile; copied by the kernel)."""
    try:
        with open(bundle, "rb") as source:
            source.seek(offset)
            with tarfile.open(fileobj=source, mode="r:") as archive:
                member = next((m for m in archive if os.path.normpath(m.name) == model.IMAGE_FILE), None)
                if member is None or not member.isfile():
                    raise ImageError(f"{bundle} holds no image: it is not a complete pyenroot bundle")
                start, size = member.offset_data, member.size
            with open(dest, "wb") as out:
                while size > 0:
                    sent = os.sendfile(out.fileno(), source.fileno(), start, min(size, 1 << 30))
                    if sent == 0:
                        raise ImageError(f"{bundle} is truncated: the image ends early")
                    start, size = start + sent, size - sent
    except tarfile.TarError as exc:
        raise ImageError(f"{bundle} is damaged: {exc}") from None
    except OSError as exc:
        where = exc.filename or dest
        raise StorageError(f"cannot extract the image of {bundle} to {where}: {exc.strerror}") from None


def run_container(args, settings: Settings, rootfs: Path) -> int:
    """Start the container in a child and wait for it, so that the unpacked image can be removed afterwards;
    the child's exit status (128+N for a signal) is the bundle's."""
    from pyenroot.commands import start
    from pyenroot.runtime import launcher

    child = os.fork()
    if child == 0:
        code = 1
        try:
            code = cli.run_guarded(
                lambda: start.start_container(start.start_options(args, launcher.Target("dir", rootfs)), settings),
                lambda: False)
        finally:
            os._exit(code)
    return launcher.supervise(child)


def verify(settings: Settings) -> int:
    """What `BUNDLE --verify` prints: what this machine has of what the bundle needs. 1 if it cannot run it."""
    from pyenroot.commands import doctor

    userns, works = doctor.user_namespace_rows()
    found = [(tool, shutil.which(tool)) for tool in UNPACKERS]
    tools = [(tool, "ok" if path else "missing", path or "not on PATH") for tool, path in found]
    python = ("python3", "ok", f"{sys.executable} {sys.version.split()[0]}")
    gpu, _ = doctor.gpu_rows(settings)
    print(doctor.render([("Bundle", [python, *userns, *tools]), ("GPU", gpu)]))
    return 0 if works and any(path for _, path in found) else 1
