"""Paths inside a container's root seen from the host, and the `Mount`s of a plan carried out there.

A target (and a source declared inside the root) is resolved within the root (`plan.resolve_inside`), so
that the image's symlinks and `..` cannot lead the mount outside; the calls go through the syscalls seam.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from pyenroot.errors import PyenrootError, RuntimeStartError
from pyenroot.runtime import fstab, plan
from pyenroot.runtime.flags import MNT_DETACH, MS_BIND, MS_MOVE, MS_REMOUNT
from pyenroot.runtime.plan import ImageFacts, Mount
from pyenroot.runtime.syscalls import Syscalls


def _readlink_in(root: str) -> Callable[[str], str | None]:
    def readlink(path: str) -> str | None:
        try:
            return os.readlink(root + path)
        except OSError:
            return None
    return readlink


def host_path(root: Path, path: str, *, follow: bool = True, refuse_escape: bool = False) -> Path:
    """The host path of container path `path`, resolved so that it cannot leave `root`: the image's symlinks
    are followed as if `root` were `/`. With `follow` false the last component is kept as named (to replace a
    link rather than what it points to); with `refuse_escape`, a `..` above the root is an error instead of
    staying at the root (mounts, like enroot's)."""
    readlink = _readlink_in(str(root))
    if follow:
        return Path(str(root) + plan.resolve_inside(path, readlink, refuse_escape=refuse_escape))
    parent, _, name = path.rstrip("/").rpartition("/")
    resolved_parent = plan.resolve_inside(parent or "/", readlink, refuse_escape=refuse_escape)
    return Path(str(root) + resolved_parent.rstrip("/") + "/" + name)


def _read_inside(root: Path, path: str) -> str:
    try:
        with open(host_path(root, path), errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def read_image_facts(root: Path) -> ImageFacts:
    return ImageFacts(
        environment=_read_inside(root, "/etc/environment"),
        fstab=_read_inside(root, "/etc/fstab"),
        has_rc=host_path(root, "/etc/rc").is_file(),
        has_rc_local=host_path(root, "/etc/rc.local").is_file(),
    )


def locked_flags(kernel: Syscalls, path: str | os.PathLike) -> int:
    """Flags the kernel locks on a mount made in a less privileged namespace: a remount must keep them."""
    try:
        return kernel.mount_flags(path)
    except OSError:
        return 0


def reason(exc: OSError) -> str:
    """The plain reason of a system call error (syscalls.py puts the call into its message too)."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


class Mounter:
    """Performs `Mount`s with targets inside `root`, never outside it."""

    def __init__(self, root: Path, kernel: Syscalls, warn: Callable[[str], None]):
        self.root = root
        self.kernel = kernel
        self.warn = warn

    def source(self, mount: Mount) -> str:
        """The source to mount: one declared inside the root filesystem (`${ENROOT_ROOTFS}/...`, as the image
        binds its Volumes) is resolved within the root like a target, so that the image's symlinks and `..`
        cannot turn it into a host path; any other source is a host path, as in enroot."""
        root = str(self.root)
        if mount.source != root and not mount.source.startswith(root + "/"):
            return mount.source
        return str(host_path(self.root, mount.source[len(root):] or "/", refuse_escape=True))

    def _create(self, mount: Mount, source: str, target: Path) -> None:
        if os.path.lexists(target):
            return
        kind = mount.create
        if kind == "auto":
            kind = "file" if mount.is_bind and not os.path.isdir(source) else "dir"
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if kind == "dir":
            target.mkdir(mode=0)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0))

    def _mount(self, mount: Mount, target: Path) -> None:
        if mount.detach:
            self.kernel.umount2(target, MNT_DETACH)
            return
        source = self.source(mount)
        if mount.create:
            self._create(mount, source, target)
        if mount.move:
            self.kernel.mount(source, target, None, MS_MOVE)
            return
        self.kernel.mount(source, target, mount.fstype, mount.flags, mount.data)
        if mount.remount_flags:
            # Keep what the kernel locked (or the remount fails with EPERM) and add what was asked for.
            flags = MS_REMOUNT | MS_BIND | mount.remount_flags | locked_flags(self.kernel, target)
            self.kernel.mount(None, target, None, flags)
        if mount.propagation:
            self.kernel.mount(None, target, None, mount.propagation)

    def perform(self, mount: Mount) -> None:
        target = None
        try:
            target = host_path(self.root, mount.target, refuse_escape=True)
            self._mount(mount, target)
        except OSError as exc:
            message = f"mount {mount.source} on {mount.target} ({mount.origin}): {reason(exc)}"
            if not mount.nofail:
                missing = exc.errno == errno.ENOENT and target is not None and not os.path.lexists(target)
                hint = f"{mount.target} does not exist in the container: add the option x-create=dir (or file)"
                raise RuntimeStartError(message, hint=hint if missing else None) from None
            if not mount.silent:
                self.warn(message)
        except PyenrootError as error:  # the target or source leads out of the root
            raise error.with_context(f"mount {mount.source} on {mount.target} ({mount.origin})") from None

    def perform_line(self, line: str) -> None:
        entry = fstab.parse_line(line, "hook")
        if entry is not None:
            self.perform(plan.mount_from_entry(entry))
