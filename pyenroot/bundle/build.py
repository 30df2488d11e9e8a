"""Making a bundle: stage the image, a copy of the pyenroot package and the configuration in a locked work entry,
then let makeself pack them behind our header (header.sh) into a hidden temp file that is renamed into place.

The image travels as it is (no unpacking, no recompression: makeself --nocomp), so a bundle is as small as its
image and quick to make; its runtime unpacks it with unsquashfs on the machine that runs it.
"""

from __future__ import annotations

import datetime
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyenroot
from pyenroot import squashfs, tools
from pyenroot.bundle import model
from pyenroot.containers.export import check_output_file, temp_output
from pyenroot.containers.work import WorkKind, clean_stale_work, work_dir
from pyenroot.errors import ConfigError, ImageError
from pyenroot.image.progress import ImportProgress

HEADER = Path(__file__).with_name("header.sh")
PACKAGE_DIR = Path(pyenroot.__file__).resolve().parent
# The staging directory and makeself's own temporary files (it writes the archive twice before the output) live in
# a locked work entry of ENROOT_TEMP_PATH: a killed run leaves nothing that the next one does not remove.
STAGING = WorkKind(prefix="pyenroot-bundle-", new_prefix="pyenroot-new-bundle-",
                           place="the temporary directory", setting="ENROOT_TEMP_PATH")


@dataclass(frozen=True)
class BundleRequest:
    image: str
    output: str | None = None
    target: str | None = None
    description: str | None = None
    all_config: bool = False
    checksum: bool = False
    force: bool = False


def make_bundle(settings, request: BundleRequest, progress: ImportProgress) -> Path:
    """Write the bundle of a squashfs image; the file appears complete or not at all."""
    image = squashfs.check_image(request.image)
    out = model.output_path(request.output, image)
    check_output_file(out, request.force or settings.flag("ENROOT_FORCE_OVERRIDE"))
    makeself = shutil.which("makeself")
    if makeself is None:
        raise ImageError("makeself is not installed", hint="install makeself (bundles are packed with it)")
    all_config = request.all_config or settings.flag("ENROOT_BUNDLE_ALL")
    info = model.BundleInfo(
        description=request.description or model.DEFAULT_DESCRIPTION,
        target=request.target or model.default_target(out),
        image_name=Path(request.image).name,
        image_size=image.stat().st_size,
        compression=squashfs.compressor_of(image),
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        version=pyenroot.__version__,
        checksum=request.checksum or settings.flag("ENROOT_BUNDLE_CHECKSUM"),
        user_config=all_config,
        settings=model.captured_settings(settings.values) if all_config else {},
    )
    base = Path(settings.get("ENROOT_TEMP_PATH") or "/tmp")
    clean_stale_work(base, STAGING)
    with work_dir(base, STAGING) as work:
        progress.phase("stage")
        payload = work.path / "payload"
        _stage(payload, image, settings, info)
        progress.phase("pack")
        with temp_output(out) as temp:
            _pack(makeself, payload, temp, work.path, info)
    progress.finish()
    return out


def _stage(payload: Path, image: Path, settings, info: model.BundleInfo) -> None:
    payload.mkdir()
    shutil.copytree(PACKAGE_DIR, payload / model.LIBRARY_DIR / "pyenroot",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _copy_config(settings.get("ENROOT_SYSCONF_PATH"), payload / model.SYSTEM_CONFIG_DIR)
    _copy_config(settings.get("ENROOT_CONFIG_PATH") if info.user_config else None, payload / model.USER_CONFIG_DIR)
    (payload / model.INFO_FILE).write_text(info.to_json())
    # A link, followed when makeself archives (--follow): the image is read once, not copied here first.
    os.symlink(image, payload / model.IMAGE_FILE)


def _copy_config(source: str | None, dest: Path) -> None:
    """hooks.d, mounts.d and environ.d of a configuration directory: their regular files (links followed), with
    their modes (a hook must stay executable). Never `.credentials` or anything else that lives there."""
    for sub in model.CONFIG_SUBDIRS:
        (dest / sub).mkdir(parents=True)
        where = Path(source) / sub if source else None
        if where is None or not where.is_dir():
            continue
        try:
            for entry in sorted(os.scandir(where), key=lambda e: e.name):
                if entry.is_file():  # follows links, like the start does when it reads them
                    shutil.copy2(entry.path, dest / sub / entry.name)
        except OSError as exc:
            raise ConfigError(f"cannot copy the configuration {where} into the bundle: {exc.strerror}"
                              + (f": {exc.filename}" if exc.filename else "")) from None


def _pack(makeself: str, payload: Path, temp: Path, scratch: Path, info: model.BundleInfo) -> None:
    argv = [makeself, "--header", str(HEADER), "--nocomp", "--nomd5", "--nocrc",
            *(["--sha256"] if info.checksum else []),
            # posix (pax): members over 8 GiB, long names; the owner is root, as in the image.
            "--follow", "--quiet", "--tar-quietly", "--tar-format", "posix",
            "--tar-extra", "--numeric-owner --owner=0 --group=0",
            "--packaging-date", info.created,
            str(payload), str(temp), "pyenroot bundle", "true"]
    # makeself keeps its temporary copies of the archive in TMPDIR: our work entry.
    tools.check(argv, f"bundle {info.image_name}", env={**os.environ, "TMPDIR": str(scratch)},
                hint="install makeself")
