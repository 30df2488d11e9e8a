"""enroot's fstab dialect, parsed into plain entries (pure: no file system, no kernel).

Besides fstab(5) it accepts omitted fields, `${VAR}` substitution, octal escapes, `fs_passno` as the mount
phase (-1 before the hooks, 0 after), and the options `x-create=dir|file|auto`, `x-move`, `x-detach`, `nofail`,
`silent`/`loud`; the first enroot releases spelled `x-create=` as `create=`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pyenroot.errors import ConfigError, UsageError
from pyenroot.octal import escape, unescape

MAX_LINE = 4096
_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
DEFAULT_BIND_OPTIONS = ("rbind", "x-create=auto")


@dataclass(frozen=True)
class FstabEntry:
    source: str
    target: str  # a path inside the container; a relative one is taken from the container's root
    fstype: str
    options: tuple[str, ...]
    passno: int
    origin: str  # "file:line", for error messages


def substitute(text: str, environ: Mapping[str, str]) -> str:
    """Replace `${NAME}` (the braced form only, like enroot) by its value; unset names become ''."""
    return _BRACED.sub(lambda m: environ.get(m.group(1), ""), text)


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
    """Whether the second of two fields is options rather than a target: targets may be relative
    (`tmp/.X11-unix`), so a field is a path when a `/` comes before any `=` (options never hold one there)."""
    return "/" not in field.split("=", 1)[0]


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
    return FstabEntry(source, target, fstype, tuple(o for o in options.split(",") if o), _passno(fields, origin),
                      origin)


def parse(text: str, origin: str = "fstab") -> list[FstabEntry]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = parse_line(line, f"{origin}:{number}")
        if entry is not None:
            entries.append(entry)
    return entries


def from_cli(spec: str) -> FstabEntry:
    """`--mount SRC:DST:TYPE:OPTS` (any prefix of the fields); every ':' separates fields, like enroot.
    A malformed value is a usage error."""
    hint = "use --mount SRC[:DST[:TYPE[:OPTIONS]]]"
    if not re.fullmatch(r"\S+(:\S+)*", spec):
        raise UsageError(f"invalid mount: {spec!r}", hint=hint)
    try:
        entry = parse_line(spec.replace(":", " "), "--mount")
    except ConfigError as error:
        raise UsageError(f"invalid mount {spec!r}: {error.message}", hint=hint) from None
    if entry is None:
        raise UsageError(f"invalid mount: {spec!r}", hint=hint)
    return entry
