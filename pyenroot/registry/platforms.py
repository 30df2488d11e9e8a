"""Platform names: `--arch` (uname -m or Go form) or this host as an OCI platform. Pure, and without the
manifest code, whose imports a Slurm step that finds its image built before does without (the built-image
cache's key names the platform)."""

from __future__ import annotations

import os

from pyenroot.errors import UsageError
from pyenroot.record import record

# `uname -m` and Go names -> (architecture, variant) in OCI terms.
_ARCHITECTURES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"), "arm64/v8": ("arm64", "v8"),
    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
    "armv7l": ("arm", "v7"), "arm/v7": ("arm", "v7"), "armv6l": ("arm", "v6"), "arm/v6": ("arm", "v6"),
    "i386": ("386", None), "i686": ("386", None), "386": ("386", None),
}


@record(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def normalize_platform(arch: str | None, host_machine: str | None = None) -> Platform:
    """`--arch` (uname -m or Go form, optionally `linux/` first) or this host -> an OCI platform."""
    text = (arch if arch else (host_machine or os.uname().machine)).strip()
    os_name = "linux"
    if text.count("/") >= 1 and text.split("/", 1)[0] in ("linux", "windows", "darwin", "freebsd"):
        os_name, text = text.split("/", 1)
    key = text.lower()
    if key in _ARCHITECTURES:
        architecture, variant = _ARCHITECTURES[key]
        return Platform(os_name, architecture, variant)
    known = ", ".join(sorted(_ARCHITECTURES))
    raise UsageError(f"unsupported architecture: {text}", hint=f"use one of: {known}")
