"""enroot's environment-file dialect and the precedence of environment sources (pure).

A file holds `NAME=value` lines; blanks and comments are dropped, lines that do not start with a valid name
and `=` are ignored, `ENROOT_*` names are reserved, one pair of surrounding quotes is stripped. Later sources
win: image /etc/environment < environ.d (system, then user) < the config script's environ() < --env < hooks.
The host environment is not inherited, except through those sources.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from pyenroot.errors import UsageError
from pyenroot.runtime.fstab import substitute

__all__ = ["EnvEntry", "cli_entry", "ignored_lines", "is_name", "login_defaults", "merge", "parse", "render",
           "source_warnings", "substitute", "with_host_values"]

_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
# Patterns a plain start does not use stay strings, compiled (and cached by re) at their first use: compiling
# every pattern at import cost each start about 0.1 ms a pattern.
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_CLI = r"^[A-Za-z_][A-Za-z0-9_]*(=|$)"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse(text: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of an environment file, in file order."""
    pairs = []
    for raw in text.splitlines():
        line = raw.lstrip(" \t")
        match = _LINE.match(line)
        if not match or match.group(1).startswith("ENROOT_"):
            continue
        pairs.append((match.group(1), _unquote(match.group(2))))
    return pairs


def ignored_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of what `parse` drops although it is neither blank nor a comment (`export X=1`,
    `A = b`, a reserved `ENROOT_*` name): a user who wrote it meant something, so it deserves a warning."""
    ignored = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip(" \t")
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match or match.group(1).startswith("ENROOT_"):
            ignored.append((number, line))
    return ignored


def _file_warning(origin: str, ignored: list[tuple[int, str]]) -> str:
    lines = ", ".join(f"line {number} {line!r}" for number, line in ignored)
    reserved = any(line.startswith("ENROOT_") for _, line in ignored)
    why = "NAME=value expected" + ("; ENROOT_* names are reserved" if reserved else "")
    return f"{origin}: ignored {lines} ({why})"


def source_warnings(files: Iterable[tuple[str, str]], cli_entries: Iterable[EnvEntry],
                    host_environ: Mapping[str, str]) -> list[str]:
    """What a start should warn about before it runs: one message per environment file (origin, text) with the
    lines it ignores, one per `--env NAME` whose NAME the host does not set (the container gets it empty)."""
    messages = [_file_warning(origin, ignored) for origin, text in files if (ignored := ignored_lines(text))]
    for name in dict.fromkeys(name for name, value in cli_entries if value is None and name not in host_environ):
        messages.append(f"--env {name}: {name} is not set here, so the container gets it empty")
    return messages


def merge(layers: Iterable[Iterable[tuple[str, str]]]) -> dict[str, str]:
    """Apply layers in order; a later value for a name replaces an earlier one."""
    result: dict[str, str] = {}
    for layer in layers:
        for name, value in layer:
            result[name] = value
    return result


EnvEntry = tuple[str, str | None]
"""A variable to set: (NAME, VALUE), or (NAME, None) for the host's value (empty when the host has none)."""


def is_name(name: str) -> bool:
    return bool(re.fullmatch(_NAME, name))


def cli_entry(entry: str) -> EnvEntry:
    """`--env NAME=VALUE`, or `--env NAME` for the host's value; a malformed one is a usage error."""
    if not re.match(_CLI, entry):
        raise UsageError(f"invalid environment variable: {entry!r}", hint="use --env NAME[=VALUE]")
    name, sep, value = entry.partition("=")
    return name, value if sep else None


def with_host_values(entries: Iterable[EnvEntry], host_environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The (name, value) pairs of `entries`, a missing value taken from the host (empty when it has none)."""
    return [(name, host_environ.get(name, "") if value is None else value) for name, value in entries]


def render(environ: Mapping[str, str]) -> str:
    """An environment file the hooks can read and append to (one NAME=value per line)."""
    return "".join(f"{name}={value}\n" for name, value in environ.items() if "\n" not in value)


def default_path(is_root: bool) -> str:
    """The PATH of a container whose sources set none."""
    return DEFAULT_ROOT_PATH if is_root else DEFAULT_PATH


def login_defaults(environ: Mapping[str, str], *, user: str, home: str, shell: str, logname: str,
                   is_root: bool) -> dict[str, str]:
    """Fill what login(1) would set, without replacing anything the sources gave."""
    result = dict(environ)
    defaults = {
        "TERM": "dumb", "HOME": home, "SHELL": shell, "USER": user, "LOGNAME": logname,
        "PATH": default_path(is_root),
    }
    for name, value in defaults.items():
        result.setdefault(name, value)
    return result
