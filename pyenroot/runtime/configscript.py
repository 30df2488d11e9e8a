"""`start -c CONFIG` / `batch CONFIG`: a bash script with `#ENROOT_*` directives and the optional functions
`environ()`, `mounts()`, `hooks()` and `rc()`, as enroot defines them.

Directives (`#ENROOT_NAME=value` lines) override settings; `environ()` prints environment lines, `mounts()`
fstab lines, `hooks()` runs like a hooks.d script, and the body of `rc()` becomes the init script.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from pyenroot import tools
from pyenroot.config import expand_variables
from pyenroot.errors import ConfigError
from pyenroot.record import record

_DIRECTIVE = re.compile(r"^#\s*(ENROOT_[A-Z0-9_]+)[\s=]+(.*?)\s*$")
_SECTION = "\x1e"
# Sources the script with the container command as its parameters, then prints each function's output
# (or, for rc, its body) after a record separator. The script's own output is discarded, like enroot's.
_DRIVER = r"""
source "$PYENROOT_CONF" "$@" >/dev/null || exit
for __f in environ mounts; do
  printf '\036%s\n' "$__f"
  if declare -F "$__f" >/dev/null; then "$__f" || exit; fi
done
printf '\036rc\n'
if declare -F rc >/dev/null; then declare -f rc; fi
printf '\036hooks\n'
if declare -F hooks >/dev/null; then echo yes; fi
"""
_HOOKS_DRIVER = 'source "$PYENROOT_CONF" "$@" >/dev/null || exit; hooks'


@record(frozen=True)
class ConfigScript:
    path: Path
    environ: str = ""
    mounts: str = ""
    rc: str | None = None
    has_hooks: bool = False


def directives(text: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The `#ENROOT_NAME=value` directives of a script (values expanded like enroot's eval)."""
    found = {}
    for line in text.splitlines():
        match = _DIRECTIVE.match(line)
        if match:
            value = match.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            found[match.group(1)] = expand_variables(value, environ)
    return found


def check_syntax(path: Path, what: str = "configuration script") -> None:
    """`bash -n`: a syntax error is reported before anything else is read from the script."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    result = tools.run(["bash", "-n", str(path)])
    if result.returncode != 0:
        raise ConfigError(f"invalid {what} {path}: {syntax_error(result.stderr, str(path))}")


def syntax_error(stderr: str, path: str) -> str:
    """The one line of `bash -n`'s report that says what is wrong ("line 4: syntax error near unexpected token
    `fi'"): its first, without the script's name; the next line only quotes the offending code."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "syntax error"
    return lines[0].removeprefix(f"{path}: ")


def rc_body(declaration: str) -> str | None:
    """The body of `declare -f rc` output (without the name line and the braces)."""
    lines = declaration.strip("\n").splitlines()
    if len(lines) < 3:
        return None
    return "\n".join(lines[2:-1]) + "\n"


def _sections(output: str) -> dict[str, str]:
    sections = {}
    for chunk in output.split(_SECTION)[1:]:
        name, _, body = chunk.partition("\n")
        sections[name] = body
    return sections


def evaluate(path: Path, command: Sequence[str], environ: Mapping[str, str]) -> ConfigScript:
    """Run the script's environ() and mounts() and read rc() (hooks() runs later, with the hooks)."""
    path = Path(os.path.abspath(path))  # hooks() runs later from another working directory
    env = dict(environ, PYENROOT_CONF=str(path))
    result = tools.run(["bash", "-c", _DRIVER, "bash", *command], env=env, stderr=tools.INHERIT)
    if result.returncode != 0:
        raise ConfigError(f"configuration script {path} failed with exit code {result.returncode}")
    sections = _sections(result.stdout)
    rc = sections.get("rc", "")
    return ConfigScript(path, sections.get("environ", ""), sections.get("mounts", ""),
                        rc_body(rc) if rc.strip() else None, bool(sections.get("hooks", "").strip()))


def hooks_argv(path: Path, command: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """How to run the script's hooks() function (argv and extra environment)."""
    return ["bash", "-c", _HOOKS_DRIVER, "bash", *command], {"PYENROOT_CONF": os.path.abspath(path)}
