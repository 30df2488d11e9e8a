"""Mounts a squashfs image at start (building one is image/squash.py's job): squashfuse below, an overlay
with a tmpfs upper layer above; or, for a writable start, the image unpacked into the tmpfs.

Runs inside the container's user and mount namespaces, whose capabilities the caller holds; squashfuse runs
as root of a nested user namespace, so that image files owned by root belong to the caller. The FUSE
servers are children that die with the container's process (parent-death signal), so they live exactly as
long as it. Writes go to the tmpfs and vanish with the mount namespace. Without FUSE the image is unpacked
into a tmpfs instead (slower, uses memory).

Why a writable start unpacks: no overlay an unprivileged user can mount renames a directory that comes from
the image. The kernel's overlayfs needs redirect_dir for that, which it refuses in a user namespace (it keeps
redirects in trusted.* xattrs), and fuse-overlayfs answers such a rename with EXDEV too. Package managers
rename directories (dpkg) and do not fall back to copying, so `--rw` gets a real directory tree.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from pyenroot import tools
from pyenroot.config import find_program
from pyenroot.errors import RuntimeStartError, StorageError
from pyenroot.record import factory, record
from pyenroot.runtime import syscalls
from pyenroot.runtime.flags import CLONE_NEWNS, CLONE_NEWUSER
from pyenroot.runtime.options import WRITABLE_UNPACK

_READY_POLL_S = 0.0001  # a server mounts in 2-4 ms; each look costs a stat
_READY_LIMIT_S = 30.0


@record
class SquashMount:
    rootfs: Path
    method: str  # "overlayfs", "fuse-overlayfs" or "unpacked"
    notes: list[str] = factory(list)


def _spawn_fuse(argv: list[str], mountpoint: Path, *, as_root: bool,
                meanwhile: Callable[[], None] | None = None) -> None:
    """Start a FUSE server in the foreground as a child and wait until its mount is in place, running
    `meanwhile` first (the server needs a few milliseconds to execute and mount).

    The container's process holds every capability of its user namespace, but a program it executes as a
    uid other than 0 would lose them. With `as_root`, the server runs as root of a user namespace of its own
    (nested in the container's, mapped onto the caller), so that what it serves as root's is the caller's,
    and its mount is cloned into the container's mount namespace. Otherwise it keeps the capabilities. Both
    must happen in the child between fork and exec, which `tools.start_server` runs; it also gives the server
    SIGKILL as its death signal, so that a server cannot outlive its container and keep the mount namespace
    and the image alive for nothing.
    """
    before = os.stat(mountpoint).st_dev
    read_end, write_end = os.pipe()
    try:
        setup = _nested_root(os.getuid(), os.getgid()) if as_root else syscalls.keep_capabilities_across_exec
        pid = tools.start_server(argv, stderr=write_end, child_setup=setup)
    finally:
        os.close(write_end)
    os.set_blocking(read_end, False)
    seen = Path(f"/proc/{pid}/root{mountpoint}") if as_root else mountpoint
    try:
        if meanwhile is not None:
            meanwhile()
        _wait_mounted(pid, seen, before, read_end)
        if as_root:
            _take_mount(pid, mountpoint)
    finally:
        os.close(read_end)


def _nested_root(uid: int, gid: int) -> Callable[[], None]:
    """The child's step into a user namespace of its own whose root is the caller (`uid`, `gid` here)."""
    kernel = syscalls.LinuxSyscalls()
    return lambda: kernel.enter_user_namespace(CLONE_NEWUSER | CLONE_NEWNS, f"0 {uid} 1", f"0 {gid} 1")


def _wait_mounted(pid: int, seen: Path, before: int, read_end: int) -> None:
    deadline = time.monotonic() + _READY_LIMIT_S
    while os.stat(seen).st_dev == before:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done or time.monotonic() > deadline:
            if not done:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            raise OSError(f"{_drain(read_end) or 'no output'}")
        time.sleep(_READY_POLL_S)


def _take_mount(pid: int, mountpoint: Path) -> None:
    """Clone the mount the server `pid` made in its own mount namespace onto the same path in ours (we hold
    every capability over its namespaces: they are nested in ours)."""
    fds = [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in ("/proc/self/ns/mnt", ".", f"/proc/{pid}/ns/mnt")]
    own, cwd, theirs = fds
    try:
        syscalls.setns(theirs, CLONE_NEWNS)
        try:
            tree = syscalls.clone_mount(mountpoint)
        finally:
            syscalls.setns(own, CLONE_NEWNS)  # also moves root and working directory to that namespace's
            os.fchdir(cwd)
        try:
            syscalls.attach_mount(tree, mountpoint)
        finally:
            os.close(tree)
    finally:
        for fd in fds:
            os.close(fd)


def _drain(fd: int) -> str:
    try:
        return os.read(fd, 4096).decode(errors="replace").strip()
    except OSError:
        return ""


def fuse_problem() -> str | None:
    """Why FUSE cannot work for this user, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (load the fuse module)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user (distributions ship it mode 0666)"
    if not (find_program("squashfuse_ll") or find_program("squashfuse")):
        return "squashfuse is not installed"
    return None


def _mount_lower(image: Path, lower: Path, meanwhile: Callable[[], None] | None) -> None:
    program = find_program("squashfuse_ll") or "squashfuse"
    _spawn_fuse([program, "-f", str(image), str(lower)], lower, as_root=True, meanwhile=meanwhile)


def _kernel_overlay(lower: Path, upper: Path, work: Path, merged: Path) -> None:
    options = f"lowerdir={lower},upperdir={upper},workdir={work},xino=off"
    try:
        # userxattr: overlayfs keeps opaque markers of directories in user.overlay.* xattrs, which a user
        # namespace may set; without it removing a directory of the image, or making one where a removed one
        # was, fails with EIO.
        syscalls.mount("overlay", merged, "overlay", 0, options + ",userxattr")
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        # Kernels before 5.11 know no userxattr; some (Ubuntu's) allow overlayfs in a user namespace all the same.
        syscalls.mount("overlay", merged, "overlay", 0, options)


def _overlay(lower: Path, upper: Path, work: Path, merged: Path, native: bool, notes: list[str]) -> str:
    if native:
        try:
            _kernel_overlay(lower, upper, work, merged)
            return "overlayfs"
        except OSError as exc:
            notes.append(f"kernel overlayfs in a user namespace failed ({exc.strerror}); using fuse-overlayfs")
    if not find_program("fuse-overlayfs"):
        raise RuntimeStartError("cannot mount an overlay: kernel overlayfs is unavailable in a user namespace "
                                "and fuse-overlayfs is not installed",
                                hint="install fuse-overlayfs, or create a container first: pyenroot create IMAGE")
    os.environ["FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT"] = "y"
    _spawn_fuse(["fuse-overlayfs", "-f", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)],
                merged, as_root=False)
    return "fuse-overlayfs"


def _unpack(image: Path, target: Path, processors: int) -> None:
    from pyenroot.containers.create import unpack_image  # only here: most starts mount instead

    if not find_program("unsquashfs"):
        raise RuntimeStartError(f"cannot start {image}: FUSE is unusable and unsquashfs is not installed",
                                hint="install squashfs-tools, or make /dev/fuse usable")
    target.rmdir()
    try:
        unpack_image(image, target, processors, str(image))
    except StorageError as exc:  # the private tmpfs is full (it may take half the memory)
        raise RuntimeStartError(f"{exc.message} (the image is unpacked into memory)",
                                hint="start it without --rw, set PYENROOT_SQSH_WRITABLE=overlay, or make a "
                                     "container of it: pyenroot create IMAGE") from None


def mount_image(image: Path, workdir: Path, *, writable: bool = False, writable_method: str = WRITABLE_UNPACK,
                native_overlay: bool = True, processors: int = 1,
                meanwhile: Callable[[], None] | None = None) -> SquashMount:
    """Make `image` a writable root filesystem under `workdir` (a tmpfs private to this mount namespace).
    `meanwhile`: the caller's work that needs no root filesystem, run while squashfuse starts (not at all
    when the image is unpacked).

    A read-only start still needs a writable root for its hooks (/etc/passwd and the like) until the root is
    remounted read-only, which an overlay gives at once. A `writable` start unpacks (see the module's
    docstring) unless `writable_method` asks for the overlay.
    """
    lower, upper, work, merged = (workdir / n for n in ("lower", "upper", "work", "rootfs"))
    for path in (lower, upper, work, merged):
        path.mkdir(mode=0o755)
    notes: list[str] = []
    if writable and writable_method == WRITABLE_UNPACK:
        if find_program("unsquashfs"):
            _unpack(image, merged, processors)
            return SquashMount(merged, "unpacked", notes)
        notes.append("unsquashfs is not installed, so the writable root is an overlay: renaming a directory "
                     "of the image will fail (install squashfs-tools)")
    problem = fuse_problem()
    if problem is None:
        try:
            _mount_lower(image, lower, meanwhile)
        except OSError as exc:
            problem = f"squashfuse failed: {exc}"
    if problem is not None:
        notes.append(f"{problem}; unpacking {image.name} into memory instead")
        _unpack(image, merged, processors)
        return SquashMount(merged, "unpacked", notes)
    method = _overlay(lower, upper, work, merged, native_overlay, notes)
    return SquashMount(merged, method, notes)
