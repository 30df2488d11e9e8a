"""What a bundle carries besides its image: a description of itself (bundle.json), and the names and defaults that
the side making it and the side running it share. Pure: no files are touched here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyenroot.image.progress import human_size

# Inside the bundle's archive (paths relative to its root).
INFO_FILE = "bundle.json"
IMAGE_FILE = "image.sqsh"  # the squashfs image as it was given; never unpacked by the shell header
LIBRARY_DIR = "lib"  # holds the pyenroot package that starts the container
SYSTEM_CONFIG_DIR = "etc/system"  # ENROOT_SYSCONF_PATH at run time
USER_CONFIG_DIR = "etc/user"  # ENROOT_CONFIG_PATH at run time (empty without --all)
CONFIG_SUBDIRS = ("hooks.d", "mounts.d", "environ.d")
DEFAULT_DESCRIPTION = "none"  # enroot's
SUFFIX = ".run"


@dataclass(frozen=True)
class BundleInfo:
    description: str
    target: str  # where --keep unpacks the image, relative to the working directory of the run
    image_name: str
    image_size: int
    compression: str
    created: str  # ISO 8601, UTC
    version: str  # of the pyenroot inside
    checksum: bool  # the header checks a SHA-256 of the archive before each run
    user_config: bool  # --all: the user's hooks.d, mounts.d, environ.d and settings
    settings: dict[str, str] = field(default_factory=dict)  # --all: settings that apply at run time

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BundleInfo:
        return cls(**json.loads(text))


def output_path(output: str | None, image: Path) -> Path:
    """-o, or IMAGE's file name without .sqsh plus .run, in the working directory (enroot's default)."""
    if output:
        return Path(os.path.abspath(output))
    base = image.name[: -len(".sqsh")] if image.name.endswith(".sqsh") and image.name != ".sqsh" else image.name
    return Path(os.path.abspath(base + SUFFIX))


def default_target(output: Path) -> str:
    """The bundle's file name without .run (enroot's default target directory)."""
    name = output.name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) and name != SUFFIX else name


def captured_settings(values: Mapping[str, str]) -> dict[str, str]:
    """What --all records of the settings: every ENROOT_* one but the paths, which belong to the machine that made
    the bundle (enroot records the same set)."""
    return {k: v for k, v in sorted(values.items()) if k.startswith("ENROOT_") and not k.endswith("_PATH")}


def describe(info: BundleInfo) -> str:
    """What `BUNDLE --info` prints."""
    config = "system hooks.d, mounts.d, environ.d"
    if info.user_config:
        config += f"; the user's too, and {len(info.settings)} settings (--all)"
    rows = [
        ("Description", info.description),
        ("Target", f"{info.target} (with --keep or --extract, relative to the working directory)"),
        ("Image", f"{info.image_name}, {human_size(info.image_size)}, {info.compression}"),
        ("Created", f"{info.created} with pyenroot {info.version}"),
        ("Checksum", "SHA-256, checked before each run" if info.checksum else "none"),
        ("Configuration", config),
        ("Needs", "python3 (3.11 or later), tar, unsquashfs (or rdsquashfs), unprivileged user namespaces"),
    ]
    return "\n".join(f"{key + ':':<15}{value}" for key, value in rows)
