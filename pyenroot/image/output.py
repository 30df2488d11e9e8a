"""The image file an import writes: an unnamed file named only when complete (`TempOutput`), where it goes
(`output_path`), and how a cached image's bytes reach it (`deliver`: a hard link, a reflink or a copy).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from pyenroot.errors import StorageError, UsageError
from pyenroot.image import squash
from pyenroot.image.built import place_copy

_O_TMPFILE = getattr(os, "O_TMPFILE", 0o20000000 | os.O_DIRECTORY)

EXISTING_OUTPUT_HINT = "remove it, choose another name with -o, or set ENROOT_FORCE_OVERRIDE=y to replace it"


class TempOutput:
    """The image being written: an unnamed file (O_TMPFILE) linked under its name only when complete,
    so that a crash, even kill -9, leaves nothing behind. Where the filesystem lacks O_TMPFILE, a hidden
    temporary name in the same directory, removed on failure."""

    def __init__(self, final: Path):
        self.final = final
        self.fd: int | None = None
        self.named: Path | None = None
        try:
            self.fd = os.open(final.parent, _O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise _output_error(exc, final) from None
            if exc.errno == errno.ENOENT:
                raise StorageError(f"directory does not exist: {final.parent}") from None
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
            os.close(fd)
            self.named = Path(name)

    @property
    def path(self) -> Path:
        """A path other processes (tar2sqfs, mksquashfs) can open; they must inherit `pass_fds`."""
        if self.named is not None:
            return self.named
        return Path(f"/proc/self/fd/{self.fd}")

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return () if self.fd is None else (self.fd,)

    def commit(self, *, replace: bool = False) -> None:
        """Give the complete file its final name. An existing file is replaced only with `replace`, and then in
        one rename: a reader sees the old image or the new one, never a part."""
        try:
            if replace:
                if self.named is None:
                    # An unnamed file cannot be renamed over another: it gets a hidden name first (for the
                    # moment between the link and the rename; linkat never follows or replaces what is there).
                    self.named = self.final.parent / f".{self.final.name}.{os.urandom(6).hex()}.partial"
                    self._link(self.named)
                os.replace(self.named, self.final)
                self.named = None
            elif self.named is not None:
                os.link(self.named, self.final)
            else:
                self._link(self.final)
        except FileExistsError:
            raise StorageError(f"file already exists: {self.final}", hint=EXISTING_OUTPUT_HINT) from None
        except OSError as exc:
            raise _output_error(exc, self.final) from None
        self.discard()

    def _link(self, name: Path) -> None:
        # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names the unnamed file; os.link only uses linkat (rather
        # than link, which would link the /proc entry itself) when given a dir_fd.
        parent = os.open(name.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(f"/proc/self/fd/{self.fd}", name.name, dst_dir_fd=parent, follow_symlinks=True)
        finally:
            os.close(parent)

    def discard(self) -> None:
        if self.named is not None:
            squash.remove_quietly(self.named)
            self.named = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _output_error(exc: OSError, path: Path) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"no space left on device: {path}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"cannot write {path}: {exc.strerror}", hint="choose another place with -o")
    return StorageError(f"cannot write {path}: {exc.strerror}")


def check_output_name(output: str | None) -> None:
    """`-o ""` is a mistake (an unset variable, say), not a request for the default name."""
    if output is not None and not output:
        raise UsageError("invalid output file: the name is empty", hint="leave -o out to use the default name")


def output_path(output: str | None, default_name: str) -> Path:
    """Where the image goes: `-o FILE`, or the default name (made from the URI) in the current directory or in
    `-o DIR` (an existing directory, or any path written with a trailing `/`)."""
    check_output_name(output)
    name = default_name if default_name.endswith(".sqsh") else f"{default_name}.sqsh"
    if output is None:
        return Path(os.path.abspath(name))
    if output.endswith("/") or os.path.isdir(output):
        return Path(os.path.abspath(os.path.join(output, name)))
    return Path(os.path.abspath(output))


def deliver(built: Path, out: TempOutput, *, replace: bool = False, link: bool = True) -> None:
    """The output gets the cached image's bytes: a hard link where the file is ours and on the same filesystem
    (no bytes copied), else a reflink or a copy into the unnamed output file, named when complete. `replace`:
    an existing output is replaced in one rename (ENROOT_FORCE_OVERRIDE). The store's files are never linked
    (`link` off): a user's output must not be a name of the site's image."""
    if link and os.stat(built).st_uid == os.getuid():
        link_name = out.final.with_name(f".{out.final.name}.{os.urandom(6).hex()}.partial") if replace else out.final
        try:
            os.link(built, link_name)
        except FileExistsError:
            raise StorageError(f"file already exists: {out.final}", hint=EXISTING_OUTPUT_HINT) from None
        except OSError:
            pass  # another filesystem, or links not allowed here: copy
        else:
            if replace:
                try:
                    os.replace(link_name, out.final)
                except OSError as exc:
                    squash.remove_quietly(link_name)
                    raise _output_error(exc, out.final) from None
            return
    try:
        fd = out.fd if out.fd is not None else os.open(out.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            place_copy(built, fd)
        finally:
            if fd != out.fd:
                os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(f"no space left on device writing {out.final}",
                               hint="free some space there, or write the image elsewhere with -o") from None
        raise _output_error(exc, out.final) from None
    out.commit(replace=replace)

