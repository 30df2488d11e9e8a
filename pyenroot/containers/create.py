"""Creating a container: a squashfs image unpacked (unsquashfs, rdsquashfs as a second try) into a locked work
entry, made readable by its owner, and renamed into ENROOT_DATA_PATH/NAME; complete or not at all."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from pyenroot import squashfs, tools
from pyenroot.containers.names import container_dir, data_path, default_name
from pyenroot.containers.remove import discard
from pyenroot.containers.tree import remove_tree
from pyenroot.containers.work import clean_stale_work, work_dir
from pyenroot.errors import ImageError, StorageError
from pyenroot.names import validate_name

TYPE_CHECKING = False  # typing's flag without importing typing (a writable Slurm step unpacks here)
if TYPE_CHECKING:
    from pyenroot.image.progress import ImportProgress


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
    if os.path.lexists(target) and not force:
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
    argv = ["unsquashfs", *progress_flags(progress), "-quiet", "-processors", str(processors), "-user-xattrs",
            "-d", str(rootfs), str(image)]
    try:
        tools.check(argv, f"unpack {label}", keep_fds=keep_fds, accept=only_device_nodes_skipped,
                    on_output=progress.tool_output() if progress is not None else None)
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


def progress_flags(progress: ImportProgress | None) -> list[str]:
    """A squashfs tool draws its bar (read back for ours) only when progress is reported."""
    return [] if progress is not None else ["-no-progress"]


def install_rootfs(rootfs: Path, target: Path, *, force: bool) -> None:
    """Rename the finished root filesystem into place; with force, an old container is swapped out first."""
    if os.path.lexists(target):
        if not force:
            raise StorageError(f"container already exists: {target.name}", hint="use -f to replace it")
        discard(target)
    # The top directory has the image's time (1970 from a reproducible build); a container's is when it was made.
    os.utime(rootfs)
    try:
        os.rename(rootfs, target)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
            raise StorageError(f"container already exists: {target.name}", hint="use -f to replace it") from None
        raise StorageError(f"cannot create {target}: {exc.strerror}") from None
