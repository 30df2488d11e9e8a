"""Container storage: names and root filesystem directories under ENROOT_DATA_PATH.

Create (unsquashfs), remove and export (mksquashfs) never leave half a result visible: work happens in a
hidden, locked entry of the data directory that `list` ignores and is renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyenroot import octal, squashfs, tools
from pyenroot.errors import ImageError, StorageError, UsageError
from pyenroot.names import is_valid_name, validate_name

if TYPE_CHECKING:
    from pyenroot.image.progress import ImportProgress

# Hidden work entries (creation in progress, removal in progress); `list` skips every hidden entry.
WORK_PREFIX = ".pyenroot-work-"
NEW_PREFIX = ".pyenroot-new-"  # a work entry before it is locked: never cleaned while young
# Only what start needs (name -> directory) is imported at module level; the tools' imports wait for create,
# export and remove, to keep `pyenroot start NAME` quick.


# ----------------------------------------------------------------------------------------------- names


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


# ------------------------------------------------------------------------------------ work entries


@dataclass
class _WorkEntry:
    """A hidden entry in the data directory, locked (flock) for as long as its creator lives."""

    path: Path
    lock_fd: int


def _work_name() -> str:
    return f"{WORK_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"


@dataclass(frozen=True)
class WorkKind:
    """Where a kind of work entry lives by name: its prefix, the prefix it has until it is locked, and what a
    failure to create one says."""

    prefix: str = WORK_PREFIX
    new_prefix: str = NEW_PREFIX
    place: str = "the data directory"
    setting: str = "ENROOT_DATA_PATH"


DATA_WORK = WorkKind()


def _lock(fd: int, *, wait: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def work_dir(base: Path, kind: WorkKind = DATA_WORK) -> Iterator[_WorkEntry]:
    """A fresh hidden directory in `base`, removed on any failure unless it was renamed away."""
    # The entry is locked before it gets a name that clean_stale_work() looks at: otherwise a concurrent
    # cleaner could find it unlocked (like a dead creator's) and delete it under our feet.
    unnamed = base / f"{kind.new_prefix}{_work_name()[len(WORK_PREFIX):]}"
    try:
        unnamed.mkdir(mode=0o700)
    except OSError as exc:
        raise StorageError(f"cannot write to {kind.place} {base}: {exc.strerror}",
                           hint=f"check {kind.setting}") from None
    fd = os.open(unnamed, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    _lock(fd, wait=True)
    path = base / (kind.prefix + unnamed.name[len(kind.new_prefix):])
    try:
        unnamed.rename(path)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            unnamed.rmdir()
        raise
    try:
        yield _WorkEntry(path, fd)
    finally:
        # On success only an empty directory is left (its content was renamed into place).
        with contextlib.suppress(OSError, StorageError):
            remove_tree(path)
        os.close(fd)


def clean_stale_work(base: Path, kind: WorkKind = DATA_WORK) -> list[str]:
    """Remove hidden work entries whose creator died (their lock is free). Returns what was removed."""
    removed = []
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(kind.prefix)]
        _remove_abandoned_new_entries(base, kind.new_prefix)
    except OSError:
        return removed
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
                         | (os.O_DIRECTORY if entry.is_dir(follow_symlinks=False) else 0))
        except OSError:
            continue
        try:
            if _lock(fd, wait=False):
                remove_tree(Path(entry.path))
                removed.append(entry.name)
        except (OSError, StorageError):
            pass  # best effort: a later run tries again
        finally:
            os.close(fd)
    return removed


def _remove_abandoned_new_entries(base: Path, new_prefix: str = NEW_PREFIX) -> None:
    """A creator killed between mkdir and rename leaves an empty entry: remove those older than an hour."""
    cutoff = time.time() - 3600
    for entry in os.scandir(base):
        if entry.name.startswith(new_prefix):
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.rmdir(entry.path)


# ------------------------------------------------------------------------------------ squashfs tools


# What unsquashfs says (exit code 2, not fatal) for each device node an unprivileged user cannot create: as
# the user ("not superuser") and as root of a user namespace (EPERM). A root filesystem never holds working
# device nodes anyway: start mounts /dev. In a user namespace (a direct `.sqsh` start unpacks there) an owner
# the namespace does not map cannot be set either (EINVAL): the file stays the caller's.
_DEVICE_NODE_SKIPPED = re.compile(r"(create_inode: )?could not create (character|block) device .*not superuser!?"
                                  r"|create_inode: failed to create (character|block) device .*Operation not permitted"
                                  r"|set_attributes: failed to change uid and gids on .*Invalid argument")


def only_device_nodes_skipped(returncode: int, lines: list[str]) -> bool:
    """unsquashfs's harmless failure: exit code 2, every message a device node it could not create."""
    return returncode == 2 and bool(lines) and all(map(_DEVICE_NODE_SKIPPED.fullmatch, lines))


# ------------------------------------------------------------------------------------------ create


def _fix_permissions(root: Path) -> None:
    """Give the owner read on everything and write+search on directories (enroot's fixperms), so that the
    user can later read, export and remove what the image shipped with restrictive modes."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            _add_mode(os.path.join(dirpath, name), stat.S_IRWXU)
        for name in filenames:
            _add_mode(os.path.join(dirpath, name), stat.S_IRUSR, executable_if_any=True)
    _add_mode(str(root), stat.S_IRWXU)


def _add_mode(path: str, bits: int, *, executable_if_any: bool = False) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return
    mode = stat.S_IMODE(st.st_mode)
    wanted = mode | bits
    if executable_if_any and mode & 0o111:
        wanted |= stat.S_IXUSR  # chmod u+X: executable for the owner if executable for anyone
    if wanted != mode:
        os.chmod(path, wanted)


def create_container(settings, image: str | os.PathLike, name: str | None = None, *, force: bool = False,
                     progress: ImportProgress | None = None) -> Path:
    """Unpack a squashfs image into ENROOT_DATA_PATH/NAME; the container appears complete or not at all."""
    name = validate_name(name if name is not None else default_name(Path(image)))
    target = container_dir(settings, name)
    image_path = squashfs.check_image(image)
    force = force or settings.flag("ENROOT_FORCE_OVERRIDE")
    if _exists(target) and not force:
        raise StorageError(f"container already exists: {name}", hint="use -f to replace it")
    base = data_path(settings)
    clean_stale_work(base)
    with work_dir(base) as work:
        rootfs = work.path / "rootfs"
        unpack_rootfs(image_path, rootfs, settings.max_processors(), work.lock_fd, str(image), progress)
        install_rootfs(rootfs, target, force=force)
    return target


def unpack_rootfs(image: Path, rootfs: Path, processors: int, lock_fd: int, label: str,
                  progress: ImportProgress | None = None) -> None:
    """Unpack a squashfs image into the new directory `rootfs` (in a locked work entry), readable and removable
    by its owner afterwards; `label` names the image in errors."""
    unpack_image(image, rootfs, processors, label, keep_fds=(lock_fd,), progress=progress)
    _fix_permissions(rootfs)


def unpack_image(image: Path, rootfs: Path, processors: int, label: str, *, keep_fds: tuple[int, ...] = (),
                 progress: ImportProgress | None = None) -> None:
    """Unpack `image` into the new directory `rootfs` with unsquashfs (parallel); if it cannot read the image,
    rdsquashfs (squashfs-tools-ng) as a second try. Device nodes are skipped.

    unsquashfs 4.5 rejects lz4 images written by tar2sqfs ("failed to read id table block") although they
    are valid; rdsquashfs reads them.
    """
    if progress is not None:
        progress.phase("unpack")
    argv = ["unsquashfs", *_progress_flags(progress), "-quiet", "-processors", str(processors), "-user-xattrs",
            "-d", str(rootfs), str(image)]
    try:
        tools.check(argv, f"unpack {label}", keep_fds=keep_fds, accept=only_device_nodes_skipped,
                    on_count=progress.count if progress is not None else None)
        return
    except ImageError as first:
        import shutil

        if shutil.which("rdsquashfs") is None:
            raise
        failure = first
    if os.path.lexists(rootfs):
        remove_tree(rootfs)
    rootfs.mkdir(mode=0o700)
    # -D: no device nodes (see above); -C/-T: modes and times as in the image; ownership stays the user's.
    fallback = ["rdsquashfs", "-q", "-D", "-C", "-T", "-u", "/", "-p", str(rootfs), str(image)]
    try:
        tools.check(fallback, f"unpack {label}", keep_fds=keep_fds)
    except ImageError:
        raise failure from None


def _progress_flags(progress: ImportProgress | None) -> list[str]:
    """A squashfs tool draws its bar (read back for ours) only when progress is reported."""
    return [] if progress is not None else ["-no-progress"]


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def install_rootfs(rootfs: Path, target: Path, *, force: bool) -> None:
    """Rename the finished root filesystem into place; with force, an old container is swapped out first."""
    if _exists(target):
        if not force:
            raise StorageError(f"container already exists: {target.name}", hint="use -f to replace it")
        _discard(target)
    # The top directory has the image's time (1970 from a reproducible build); a container's is when it was made.
    os.utime(rootfs)
    try:
        os.rename(rootfs, target)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
            raise StorageError(f"container already exists: {target.name}", hint="use -f to replace it") from None
        raise StorageError(f"cannot create {target}: {exc.strerror}") from None


# ------------------------------------------------------------------------------------------ remove


def remove_container(settings, name: str) -> None:
    """Delete a container: it disappears from `list` at once, then its files are removed."""
    path = existing_container(settings, name)
    _discard(path)


def _discard(path: Path) -> None:
    """Move `path` (a container dir, or a stray file/link) to a hidden work name, then delete it.

    The lock is taken before the rename so that no concurrent clean-up deletes it under us; a kill in the
    middle leaves a hidden, unlocked entry that the next create or remove cleans up.
    """
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags)
        except PermissionError:  # its owner's bits are gone (a chmod, an image's mode): ours to give back
            _ensure_owner_rwx(str(path), os.lstat(path))
            fd = os.open(path, flags)
    except OSError as exc:
        raise StorageError(f"cannot remove {path}: {exc.strerror}") from None
    try:
        _lock(fd, wait=True)
        trash = path.parent / _work_name()
        try:
            os.rename(path, trash)
        except OSError as exc:
            raise StorageError(f"cannot remove {path}: {exc.strerror}") from None
        remove_tree(trash)
    finally:
        os.close(fd)
    clean_stale_work(path.parent)


def remove_tree(path: Path) -> None:
    """Delete a directory tree like `rm -rf --one-file-system`, even where write or search bits are missing.

    Works on directory descriptors and never follows symbolic links; a mount point inside stops the removal.
    """
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    _ensure_owner_rwx(str(path), st)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        mounts = _purge(fd, st.st_dev, str(path))
    finally:
        os.close(fd)
    if mounts:
        raise StorageError(f"cannot remove {path}: a file system is mounted at {mounts[0]}",
                           hint="unmount it (or stop the container using it) and try again")
    os.rmdir(path)


def _ensure_owner_rwx(path: str, st: os.stat_result, dir_fd: int | None = None) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IRWXU != stat.S_IRWXU:
        os.chmod(path, mode | stat.S_IRWXU, dir_fd=dir_fd)


def _purge(dir_fd: int, device: int, where: str) -> list[str]:
    """Empty the directory open at `dir_fd`; returns mount points found (left in place)."""
    mounts: list[str] = []
    for name in os.listdir(dir_fd):
        st = os.lstat(name, dir_fd=dir_fd)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            continue
        child_path = f"{where}/{name}"
        if st.st_dev != device:
            mounts.append(child_path)
            continue
        _ensure_owner_rwx(name, st, dir_fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if os.fstat(child).st_ino != st.st_ino:  # swapped between lstat and open: leave it
                mounts.append(child_path)
                continue
            inner = _purge(child, device, child_path)
        finally:
            os.close(child)
        if inner:
            mounts.extend(inner)
        else:
            os.rmdir(name, dir_fd=dir_fd)
    return mounts


# ------------------------------------------------------------------------------------------ export


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
            argv = ["mksquashfs", str(root), str(temp), "-noappend", "-all-root", *_progress_flags(progress),
                    "-quiet", "-processors", str(settings.max_processors()), *squash_options(settings),
                    "-ef", str(exclude_file)]
            if progress is not None:
                progress.phase("squash")
            tools.check(argv, f"export {name}", on_count=progress.count if progress is not None else None)
        finally:
            with contextlib.suppress(OSError):
                exclude_file.unlink()
    return out


def check_output_file(out: Path, force: bool) -> None:
    """Refuse to replace an existing file without force, a directory ever, or to write where no directory is."""
    if _exists(out) and not force:
        raise StorageError(f"file already exists: {out}", hint="use -f (or ENROOT_FORCE_OVERRIDE=y) to overwrite it")
    if _exists(out) and out.is_dir():
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
        _lock(lock_fd, wait=True)
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
            if _lock(fd, wait=False):
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


# -------------------------------------------------------------------------------- running containers

UNKNOWN_NAME = "<unknown>"


@dataclass(frozen=True)
class MountEntry:
    """The fields of one /proc/PID/mountinfo line that locate a mount's source."""

    device: str  # major:minor
    root: str  # path of the mount's root within its file system
    mountpoint: str
    fstype: str = ""  # after the " - " separator: tmpfs, ext4, nfs4, lustre...


@dataclass(frozen=True)
class ContainerProcess:
    """A process running in a container's mount namespace (the lowest PID of that namespace)."""

    name: str  # UNKNOWN_NAME: not started from ENROOT_DATA_PATH (e.g. straight from a .sqsh image)
    pid: int
    state: str
    started: float  # seconds since the epoch
    mntns: int
    userns: int
    command: str


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5:
            after = fields.index("-", 6) + 1 if "-" in fields[6:] else len(fields)
            fstype = fields[after] if after < len(fields) else ""
            entries.append(MountEntry(fields[2], octal.unescape(fields[3]), octal.unescape(fields[4]), fstype))
    return entries


def root_mount(entries: list[MountEntry]) -> MountEntry | None:
    """The mount a process sees as `/` (the last one mounted there is on top)."""
    found = [e for e in entries if e.mountpoint == "/"]
    return found[-1] if found else None


def containing_mount(entries: list[MountEntry], path: str) -> MountEntry | None:
    """The mount that holds `path` (an absolute, resolved path): the longest mount point above it."""
    best = None
    for entry in entries:
        point = entry.mountpoint.rstrip("/") or "/"
        inside = path == point or path.startswith(point + "/") or point == "/"
        if inside and (best is None or len(point) >= len(best.mountpoint.rstrip("/") or "/")):
            best = entry
    return best


def data_location(entries: list[MountEntry], data: str) -> MountEntry:
    """Where ENROOT_DATA_PATH lives, as (device, path within that file system)."""
    mount = containing_mount(entries, data)
    if mount is None:
        return MountEntry("", data, data)
    point = mount.mountpoint.rstrip("/") or "/"
    relative = os.path.relpath(data, point)
    inner = os.path.normpath(os.path.join(mount.root, relative)) if relative != "." else mount.root
    return MountEntry(mount.device, inner, data)


def container_name_of(root: MountEntry, data: MountEntry) -> str | None:
    """The container name if a process's root mount is a directory directly inside the data path."""
    if data.device and root.device != data.device:
        return None
    parent, _, name = root.root.rstrip("/").rpartition("/")
    if (parent or "/") != (data.root.rstrip("/") or "/") or not name:
        return None
    return name if is_valid_name(name) else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()
    except OSError:
        return None


def _ns_inode(pid: int | str, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def parse_stat(text: str) -> tuple[str, int]:
    """(state letter, start time in clock ticks after boot) from a /proc/PID/stat line."""
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def _boot_time() -> float:
    for line in (_read("/proc/stat") or "").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def running_containers(settings) -> list[ContainerProcess]:
    """Containers of this user that are running: one process per mount namespace, found through /proc.

    A process belongs to a container if its root is a directory of ENROOT_DATA_PATH or holds the `/.lock`
    file that start puts there; processes sharing our own mount namespace never do.
    """
    own_mnt = _ns_inode("self", "mnt")
    data = data_location(parse_mountinfo(_read("/proc/self/mountinfo") or ""),
                         os.path.realpath(data_path(settings, create=False)))
    ticks = os.sysconf("SC_CLK_TCK")
    boot = _boot_time()
    own_pidns = _ns_inode("self", "pid")
    best: dict[int, tuple[tuple[bool, bool, int], ContainerProcess]] = {}
    for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
        process = _container_process(pid, own_mnt, data, ticks, boot)
        if process is None:
            continue
        # Show the process a user means: with a PID namespace the container's command (the one `exec` should
        # join) rather than the launcher waiting in the host's or pyenroot's init; a FUSE daemon serving the
        # image (pivot_root moved its root too) only when nothing else is left.
        rank = (_ns_inode(pid, "pid") == own_pidns, _is_helper(pid), pid)
        if process.mntns not in best or rank < best[process.mntns][0]:
            best[process.mntns] = (rank, process)
    return sorted((p for _, p in best.values()), key=lambda p: (p.name, p.pid))


# Processes that serve a container rather than run in it: FUSE daemons, and the init of a --pid container
# (launcher.INIT_PROCESS_NAME).
_HELPERS = frozenset({"squashfuse", "squashfuse_ll", "fuse-overlayfs", "pyenroot-init"})


def _is_helper(pid: int) -> bool:
    return (_read(f"/proc/{pid}/comm") or "").strip() in _HELPERS


def _container_process(pid: int, own_mnt: int | None, data: MountEntry, ticks: int,
                       boot: float) -> ContainerProcess | None:
    mntns = _ns_inode(pid, "mnt")
    if mntns is None or mntns == own_mnt:
        return None
    mountinfo = _read(f"/proc/{pid}/mountinfo")
    root = root_mount(parse_mountinfo(mountinfo or ""))
    if root is None:
        return None
    name = container_name_of(root, data)
    if name is None:
        if not os.path.lexists(f"/proc/{pid}/root/.lock"):
            return None
        name = UNKNOWN_NAME
    stat_text = _read(f"/proc/{pid}/stat")
    if stat_text is None:
        return None
    state, start_ticks = parse_stat(stat_text)
    cmdline = (_read(f"/proc/{pid}/cmdline") or "").rstrip("\0").replace("\0", " ")
    return ContainerProcess(name, pid, state, boot + start_ticks / ticks, mntns, _ns_inode(pid, "user") or 0,
                            cmdline)


def running_pids(settings, name: str) -> list[int]:
    """PIDs (one per mount namespace) of the running instances of container `name`."""
    return [p.pid for p in running_containers(settings) if p.name == name]


STOP_GRACE_S = 5.0  # between SIGTERM and SIGKILL
STOP_LIMIT_S = 30.0  # after SIGKILL: a process in uninterruptible sleep may take a while


def _members(namespaces: set[int]) -> list[int]:
    """Every process in one of the mount namespaces `namespaces`: a container's own processes and those that
    joined it (Slurm tasks, `exec`)."""
    pids = (int(p) for p in os.listdir("/proc") if p.isdigit())
    return [pid for pid in pids if _ns_inode(pid, "mnt") in namespaces]


def _signal_all(pids: list[int], number: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, number)
            os.kill(pid, signal.SIGCONT)  # a stopped process (a Slurm step's anchor) acts on SIGTERM only then


def _wait_gone(namespaces: set[int], limit: float) -> list[int]:
    deadline = time.monotonic() + limit
    while (left := _members(namespaces)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def stop_container(settings, name: str) -> int:
    """Stop every process of running container `name` (SIGTERM, then SIGKILL after STOP_GRACE_S), so that a
    removed container cannot live on in namespaces nobody can name. Returns how many processes it had."""
    namespaces = {p.mntns for p in running_containers(settings) if p.name == name}
    if not namespaces:
        return 0
    members = _members(namespaces)
    _signal_all(members, signal.SIGTERM)
    left = _wait_gone(namespaces, STOP_GRACE_S)
    if left:
        _signal_all(left, signal.SIGKILL)
        left = _wait_gone(namespaces, STOP_LIMIT_S)
    if left:
        raise StorageError(f"cannot stop container {name}: PID {left[0]} is still running",
                           hint=f"stop it (kill -KILL {left[0]}) and try again")
    return len(members)
