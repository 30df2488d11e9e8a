"""enroot's fstab dialect, parsed into plain entries (pure: no file system, no kernel).

Besides fstab(5) it accepts omitted fields, `${VAR}` substitution, octal escapes, `fs_passno` as the mount
phase (-1 before the hooks, 0 after), and the options `x-create=dir|file|auto`, `x-move`, `x-detach`, `nofail`,
`silent`/`loud`; the first enroot releases spelled `x-create=` as `create=`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pyenroot.errors import ConfigError, UsageError
from pyenroot.octal import escape, unescape
from pyenroot.record import record
from pyenroot.runtime.flags import (
    MS_BIND,
    MS_DIRSYNC,
    MS_LAZYTIME,
    MS_MANDLOCK,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_NOSYMFOLLOW,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    MS_SHARED,
    MS_SLAVE,
    MS_STRICTATIME,
    MS_SYNCHRONOUS,
    MS_UNBINDABLE,
)

MAX_LINE = 4096
_BRACED = r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}"  # compiled (and cached by re) at the first line that has one
DEFAULT_BIND_OPTIONS = ("rbind", "x-create=auto")
CREATE_KEYS = ("x-create", "create")  # `create=` is the first releases' spelling
CREATE_KINDS = ("dir", "file", "auto")

# The option words of the dialect (plan.mount_from_entry turns them into mount(2) arguments); any other
# option is file-system data.
# option -> (flags to set, flags to clear)
FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0), "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0), "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0), "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0), "mand": (MS_MANDLOCK, 0), "nomand": (0, MS_MANDLOCK),
    "noatime": (MS_NOATIME, 0), "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0), "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0), "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0), "nostrictatime": (0, MS_STRICTATIME),
    "lazytime": (MS_LAZYTIME, 0), "nolazytime": (0, MS_LAZYTIME),
    "nosymfollow": (MS_NOSYMFOLLOW, 0),
    "remount": (MS_REMOUNT, 0),
    "bind": (MS_BIND, 0), "rbind": (MS_BIND | MS_REC, 0),
}
PROPAGATION_OPTIONS: dict[str, int] = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC,
    "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC,
    "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
    "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | MS_REC,
}
# fstab words that mean nothing to mount(2).
NOOP_OPTIONS = frozenset({"defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev",
                           "loud", "nofail", "silent", "x-move", "x-detach"})


@record(frozen=True)
class FstabEntry:
    source: str
    target: str  # a path inside the container; a relative one is taken from the container's root
    fstype: str
    options: tuple[str, ...]
    passno: int
    origin: str  # "file:line", for error messages


def substitute(text: str, environ: Mapping[str, str]) -> str:
    """Replace `${NAME}` (the braced form only, like enroot) by its value; unset names become ''."""
    if "${" not in text:
        return text
    return re.sub(_BRACED, lambda m: environ.get(m.group(1), ""), text)


def format_line(source: str, target: str, fstype: str = "none", options: str = "defaults", passno: int = 0) -> str:
    return f"{escape(source)} {escape(target)} {fstype} {options} 0 {passno}"


def _passno(fields: list[str], origin: str) -> int:
    try:
        dump = int(fields[4]) if len(fields) > 4 else 0
        passno = int(fields[5]) if len(fields) > 5 else 0
    except ValueError:
        raise ConfigError(f"invalid fstab entry at {origin}: dump and pass must be numbers") from None
    # enroot reads the fifth field as the pass when the sixth says 0, so `SRC DST TYPE OPTS -1` works too.
    return passno if passno != 0 else dump


def is_options(field: str) -> bool:
    """Whether the second of two fields is options rather than a target. Targets may be relative
    (`tmp/.X11-unix`, `data`), so the field is options only when no `/` comes before any `=` (options never
    hold one there) and each of its comma-separated words is an option: one of the dialect's words, or a
    `KEY=VALUE` (`x-create=dir`, `size=1g`). Anything else (`data`, `mnt/data`) is a target."""
    if "/" in field.split("=", 1)[0]:
        return False
    return all(_is_option_word(word) for word in field.split(","))


def _is_option_word(word: str) -> bool:
    return word in FLAG_OPTIONS or word in PROPAGATION_OPTIONS or word in NOOP_OPTIONS or "=" in word


def _infer(fields: list[str]) -> tuple[str, str, str, str]:
    """Fill omitted fields: SRC | SRC DST | SRC OPTS | SRC DST OPTS | SRC DST TYPE OPTS."""
    source = fields[0]
    if len(fields) == 1:
        return source, source, "none", ",".join(DEFAULT_BIND_OPTIONS)
    if len(fields) == 2:
        second = fields[1]
        if is_options(second):
            return source, source, "none", second
        if source == "tmpfs":
            return source, second, "tmpfs", "defaults"
        return source, second, "none", ",".join(DEFAULT_BIND_OPTIONS)
    if len(fields) == 3:
        return source, fields[1], "none", fields[2]
    return source, fields[1], fields[2], fields[3]


def parse_line(line: str, origin: str) -> FstabEntry | None:
    """One fstab line, or None for a blank line or a comment."""
    if len(line) > MAX_LINE:
        raise ConfigError(f"invalid fstab entry at {origin}: line longer than {MAX_LINE} characters")
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    fields = [unescape(f) for f in stripped.split()]
    if len(fields) > 6:
        raise ConfigError(f"invalid fstab entry at {origin}: too many fields: {stripped!r}")
    source, target, fstype, options = _infer(fields)
    if target == "none":
        target = source
    words = tuple(o for o in options.split(",") if o)
    check_create(words, origin)
    return FstabEntry(source, target, fstype, words, _passno(fields, origin), origin)


def check_create(options: tuple[str, ...], origin: str) -> None:
    for option in options:
        key, _, value = option.partition("=")
        if key in CREATE_KEYS and value not in CREATE_KINDS:
            raise ConfigError(f"invalid fstab entry at {origin}: {key} must be dir, file or auto")


def parse(text: str, origin: str = "fstab") -> list[FstabEntry]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = parse_line(line, f"{origin}:{number}")
        if entry is not None:
            entries.append(entry)
    return entries


CLI_FIELDS = ("SRC", "DST", "TYPE", "OPTIONS", "DUMP", "PASS")


def from_cli(spec: str) -> FstabEntry:
    """`--mount SRC:DST:TYPE:OPTS` (any prefix of the fields); every ':' separates fields, like enroot.
    A malformed value is a usage error: an empty field would shift the others (`:/d` is not a source)."""
    hint = "use --mount SRC[:DST[:TYPE[:OPTIONS]]]"
    if not spec or any(c.isspace() for c in spec):
        raise UsageError(f"invalid mount: {spec!r}" + (" (blanks need the \\040 escape)" if spec else ""),
                         hint=hint)
    fields = spec.split(":")
    if len(fields) > len(CLI_FIELDS):
        raise UsageError(f"invalid mount {spec!r}: more than {len(CLI_FIELDS)} fields", hint=hint)
    empty = [CLI_FIELDS[i] for i, value in enumerate(fields) if not value]
    if empty:
        raise UsageError(f"invalid mount {spec!r}: empty {', '.join(empty)} field{'s' if len(empty) > 1 else ''}",
                         hint=hint)
    try:
        entry = parse_line(spec.replace(":", " "), "--mount")
    except ConfigError as error:
        detail = error.message.removeprefix("invalid fstab entry at --mount: ")
        raise UsageError(f"invalid mount {spec!r}: {detail}", hint=hint) from None
    if entry is None:
        raise UsageError(f"invalid mount: {spec!r}", hint=hint)
    return entry
