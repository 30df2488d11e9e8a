"""Exporting a container as a squashfs image (mksquashfs), written to a hidden locked temp file next to the
output and renamed over it at the end; the leftovers of killed exports are removed by the next one."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pyenroot import tools
from pyenroot.containers.create import progress_flags
from pyenroot.containers.names import existing_container
from pyenroot.containers.work import take_lock
from pyenroot.errors import StorageError, UsageError

if TYPE_CHECKING:
    from pyenroot.image.progress import ImportProgress


def export_excludes(root: Path) -> list[str]:
    """Paths (relative to the root) that an exported image leaves out: the contents of /dev, the empty
    mode-0000 mount points that x-create made, the start lock and bundle runtime files."""
    excludes = []
    dev = root / "dev"
    if dev.is_dir() and not dev.is_symlink():
        excludes.extend(f"dev/{name}" for name in sorted(os.listdir(dev)))
    for name in (".lock", ".enroot"):
        if os.path.lexists(root / name):
            excludes.append(name)
    for dirpath, dirnames, filenames in os.walk(root):
        relative = os.path.relpath(dirpath, root)
        if relative in ("dev", ".enroot"):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            if _is_mountpoint_stub(os.path.join(dirpath, name)):
                excludes.append(os.path.normpath(os.path.join(relative, name)))
    return sorted(set(excludes))


def _is_mountpoint_stub(path: str) -> bool:
    st = os.lstat(path)
    if stat.S_IMODE(st.st_mode) != 0:
        return False
    if stat.S_ISREG(st.st_mode):
        return st.st_size == 0
    if stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            return not os.listdir(path)
        return True  # unreadable mode-0000 directory: a mount point as far as we can tell
    return False


# What follows `.<image name>.` in an export's temp files: `<pid>-<8 hex>.tmp`, and `.excludes` after that.
_EXPORT_TEMP = re.compile(r"\d+-[0-9a-f]{8}\.tmp(\.excludes)?")


def default_export_path(name: str) -> Path:
    return Path(os.path.abspath(f"{name}.sqsh"))


def export_container(settings, name: str, output: str | os.PathLike | None = None, *, force: bool = False,
                     progress: ImportProgress | None = None) -> Path:
    """Write the container's root filesystem as a squashfs image; the file appears complete or not at all."""
    root = existing_container(settings, name)
    out = Path(os.path.abspath(output)) if output else default_export_path(name)
    check_output_file(out, force or settings.flag("ENROOT_FORCE_OVERRIDE"))
    with temp_output(out) as temp:
        exclude_file = out.parent / f"{temp.name}.excludes"
        try:
            try:
                excludes = export_excludes(root)
            except OSError as exc:  # not the output's fault: say what could not be read
                raise StorageError(f"cannot read container {name}: {exc.strerror}: {exc.filename}") from None
            exclude_file.write_text("".join(f"{e}\n" for e in excludes if "\n" not in e))
            argv = ["mksquashfs", str(root), str(temp), "-noappend", "-all-root", *progress_flags(progress),
                    "-quiet", "-processors", str(settings.max_processors()), *squash_options(settings),
                    "-ef", str(exclude_file)]
            if progress is not None:
                progress.phase("squash")
            tools.check(argv, f"export {name}", on_output=progress.tool_output() if progress is not None else None)
        finally:
            with contextlib.suppress(OSError):
                exclude_file.unlink()
    return out


def check_output_file(out: Path, force: bool) -> None:
    """Refuse to replace an existing file without force, a directory ever, or to write where no directory is."""
    if os.path.lexists(out) and not force:
        raise StorageError(f"file already exists: {out}", hint="use -f (or ENROOT_FORCE_OVERRIDE=y) to overwrite it")
    if os.path.lexists(out) and out.is_dir():
        raise StorageError(f"cannot write {out}: it is a directory")
    if not os.path.isdir(out.parent):  # os.path: a name too long or a directory we may not search is "no"
        raise StorageError(f"cannot write {out}: no such directory {out.parent}")


@contextlib.contextmanager
def temp_output(out: Path) -> Iterator[Path]:
    """A hidden, locked temp file next to `out` for a tool to write; renamed over `out` when the block succeeds,
    removed when it fails. A later run removes the leftovers of killed ones (clean_stale_exports)."""
    temp = out.parent / f".{out.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
    lock_fd = -1
    try:
        clean_stale_exports(out)
        # Created and locked before the tool writes into it (it keeps the inode), so that a later run can tell
        # the leftover of a killed run (lock free) from one in progress. 0666: the umask decides.
        lock_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        take_lock(lock_fd, wait=True)
        yield temp
        os.rename(temp, out)
    except OSError as exc:
        raise StorageError(f"cannot write {out}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()
        if lock_fd >= 0:
            os.close(lock_fd)


def clean_stale_exports(out: Path) -> list[str]:
    """Remove the hidden temp files that a killed export to `out` left next to it (their lock is free)."""
    prefix, removed = f".{out.name}.", []
    try:
        names = [n for n in os.listdir(out.parent) if n.startswith(prefix) and _EXPORT_TEMP.fullmatch(n[len(prefix):])]
    except OSError:
        return removed
    for name in names:
        path = out.parent / name
        if name.endswith(".excludes"):
            if not os.path.lexists(path.with_suffix("")):  # its image was renamed into place or cleaned up
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(name)
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if take_lock(fd, wait=False):
                for stale in (path, path.parent / f"{name}.excludes"):
                    with contextlib.suppress(FileNotFoundError):
                        stale.unlink()
                        removed.append(stale.name)
        except OSError:
            pass  # best effort: a later export tries again
        finally:
            os.close(fd)
    return removed


def squash_options(settings) -> list[str]:
    """ENROOT_SQUASH_OPTIONS split like a shell would (mksquashfs syntax)."""
    import shlex

    value = settings.get("ENROOT_SQUASH_OPTIONS") or ""
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise UsageError(f"invalid ENROOT_SQUASH_OPTIONS: {exc}") from None
