"""Trust a file or directory by its owner and mode, never by its name.

A name in a directory that other users can write (/tmp, a shared cache) may have been planted there. Before
pyenroot uses a runtime directory, a cache directory or a file found in one, it checks with `lstat` who owns
the path and each directory above it, and who may write them. The checks of stat results are pure.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Collection
from pathlib import Path

from pyenroot.errors import StorageError

ROOT_UID = 0
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


class UntrustedPathError(StorageError):
    """A path that someone other than the user (or root, or a configured owner) could have written."""

    reference = "untrusted-path"


def owner_label(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _kind_problem(st: os.stat_result, wanted: str) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if wanted == "dir" and not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if wanted == "file" and not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    return None


def private_problem(st: os.stat_result, wanted: str, owners: Collection[int]) -> str | None:
    """Why an entry (its lstat result) is not the caller's own: wrong kind, another owner, writable by others."""
    kind = _kind_problem(st, wanted)
    if kind:
        return kind
    if st.st_uid not in owners:
        return f"belongs to {owner_label(st.st_uid)}"
    if st.st_mode & _OTHERS_WRITE:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}, owner {owner_label(st.st_uid)})"
    return None


def ancestor_problem(st: os.stat_result, owners: Collection[int]) -> str | None:
    """Why a directory above a trusted entry lets others replace that entry. A sticky directory (/tmp) is fine:
    others cannot rename or remove what they do not own there, and the entry below is checked itself."""
    if st.st_uid not in owners:
        return f"belongs to {owner_label(st.st_uid)}"
    if st.st_mode & _OTHERS_WRITE and not st.st_mode & stat.S_ISVTX:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _owners(uid: int | None, extra: Collection[int]) -> frozenset[int]:
    return frozenset({os.getuid() if uid is None else uid, ROOT_UID, *extra})


DEFAULT_HINT = "use a directory that only you (or root) can write"


def _check_ancestors(path: Path, owners: Collection[int], what: str, hint: str = DEFAULT_HINT) -> None:
    directory = Path(os.path.realpath(path.parent))
    for ancestor in (directory, *directory.parents):
        problem = ancestor_problem(os.lstat(ancestor), owners)
        if problem:
            raise UntrustedPathError(f"{what} {path} is not safe: the directory {ancestor} above it {problem}",
                                     hint=hint)


def check_private_dir(path: Path, what: str, *, uid: int | None = None, ancestors: bool = True,
                      hint: str = DEFAULT_HINT) -> Path:
    """`path` must be a directory (not a link) of the user's own, writable by nobody else; with `ancestors`,
    no directory above it may let others replace it. Inside a user namespace, where root's files show as
    the overflow id, pass `ancestors=False` (they were checked before the namespace was entered)."""
    owner = os.getuid() if uid is None else uid
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise UntrustedPathError(f"cannot use {what} {path}: {exc.strerror}") from None
    problem = private_problem(st, "dir", {owner})
    if problem:
        raise UntrustedPathError(f"{what} {path} {problem}: refusing to use it", hint=hint)
    if ancestors:
        _check_ancestors(path, {owner, ROOT_UID}, what, hint)
    return path


def private_dir(path: Path | str, what: str, *, uid: int | None = None, ancestors: bool = True,
                hint: str = DEFAULT_HINT) -> Path:
    """Create `path` and any missing parents with mode 0700 (never inside a directory others could have
    made or may write, and never taking over what exists), then check it with `check_private_dir`."""
    path = Path(os.path.abspath(path))
    owner = os.getuid() if uid is None else uid
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    if missing and ancestors:
        _check_ancestors(missing[-1], {owner, ROOT_UID}, what, hint)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # made by someone else meanwhile: the check below decides
        except OSError as exc:
            raise StorageError(f"cannot create {what} {directory}: {exc.strerror}") from None
    return check_private_dir(path, what, uid=uid, ancestors=ancestors, hint=hint)


def untrusted(path: Path, wanted: str, *, uid: int | None = None, owners: Collection[int] = ()) -> str | None:
    """Why `path` may hold what someone else wrote (None: it is trustworthy). `wanted` "file": a regular file
    owned by the user, root or one of `owners` and writable by nobody else; "dir": a directory where nobody
    else can add or replace entries (a sticky one is fine). No directory above it may let others replace it."""
    trusted = _owners(uid, owners)
    try:
        st = os.lstat(path)
        if wanted == "file":
            problem = private_problem(st, "file", trusted)
        else:
            problem = _kind_problem(st, "dir") or ancestor_problem(st, trusted)
        if problem:
            return f"{path} {problem}"
        _check_ancestors(path, trusted, wanted)
    except UntrustedPathError as exc:
        return exc.message
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return None


def uids_of(names: str) -> frozenset[int]:
    """User names or numeric ids, separated by commas or blanks (a setting's value); unknown names are skipped."""
    found: set[int] = set()
    for word in names.replace(",", " ").split():
        if word.isdigit():
            found.add(int(word))
            continue
        try:
            found.add(pwd.getpwnam(word).pw_uid)
        except KeyError:
            continue
    return frozenset(found)
