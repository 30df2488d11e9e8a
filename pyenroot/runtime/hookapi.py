"""What a built-in hook sees and may change. Built-in hooks are Python functions (no shell start-up);
site and user hooks are executables in hooks.d that get the same information through ENROOT_* variables
(ENROOT_PID, ENROOT_ROOTFS, ENROOT_ENVIRON, ENROOT_MOUNTS) as enroot gives them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pyenroot.record import factory, record


def _no_mounting(fstab_line: str) -> None:
    raise RuntimeError("mount_now: this hook context mounts nothing (only the launcher's does)")


@record
class HookContext:
    rootfs: Path  # the container's root, seen from the host side before pivot_root
    environ: dict[str, str]  # the container environment computed so far (hooks may add to it)
    host_environ: dict[str, str]  # the environment pyenroot was started with (includes ENROOT_* settings)
    outer_uid: int  # caller's uid on the host
    outer_gid: int
    remap_root: bool  # the caller is uid 0 inside
    pid: int  # ENROOT_PID
    mounts: list[str] = factory(list)  # fstab lines to mount after the hooks (pass 0)
    # Mount one fstab line at once, before the next hook runs (the launcher's Mounter; a /dev replaced in
    # place must be there for later hooks).
    mount_now: Callable[[str], None] = _no_mounting

    def add_mount(self, fstab_line: str) -> None:
        self.mounts.append(fstab_line)

    def set_env(self, name: str, value: str) -> None:
        self.environ[name] = value


BuiltinHook = Callable[[HookContext], None]
