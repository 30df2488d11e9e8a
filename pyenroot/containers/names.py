"""Container names to directories under ENROOT_DATA_PATH, and the list of containers there.

Quick to import: `start NAME` needs only this module of the store (the naming rule is pyenroot/names.py).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pyenroot.errors import StorageError, UsageError
from pyenroot.names import validate_name


def default_name(image: Path) -> str:
    """The name `create` gives a container by default: the image's file name without `.sqsh`."""
    base = image.name
    return base[: -len(".sqsh")] if base.endswith(".sqsh") and base != ".sqsh" else base


def data_path(settings, *, create: bool = True) -> Path:
    """ENROOT_DATA_PATH as an absolute path; created private (mode 0700) like enroot does."""
    path = Path(os.path.abspath(settings.path("ENROOT_DATA_PATH")))
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageError(f"cannot create the data directory {path}: {exc.strerror}",
                               hint="check ENROOT_DATA_PATH") from None
    return path


def container_dir(settings, name: str) -> Path:
    """The directory of container `name`: always a direct child of ENROOT_DATA_PATH."""
    validate_name(name)
    base = data_path(settings, create=False)
    path = base / name
    # A validated name is one plain path component; check anyway, it is cheap and this must never escape.
    if path.parent != base or path.name != name:
        raise UsageError(f"invalid container name {name!r}")
    return path


def existing_container(settings, name: str) -> Path:
    """The directory of an existing container, or StorageError. A symlink is not a container."""
    path = container_dir(settings, name)
    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = 0
    except OSError as exc:  # the data directory itself is not ours to read
        raise StorageError(f"cannot read the data directory {path.parent}: {exc.strerror}",
                           hint="check ENROOT_DATA_PATH") from None
    if not stat.S_ISDIR(mode):
        raise StorageError(f"no such container: {name}", hint="see 'pyenroot list'")
    return path


def container_names(settings) -> list[str]:
    """Names of the containers in ENROOT_DATA_PATH, sorted; hidden work entries are skipped."""
    base = data_path(settings, create=False)
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(f"cannot read {base}: {exc.strerror}") from None
    return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
