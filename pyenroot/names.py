"""Container names: the one rule, for every verb that takes a NAME (create, start, export, remove, load -n, list).

Pure and quick to import: `start NAME` checks a name before it imports anything heavier.
"""

from __future__ import annotations

import re

from pyenroot.errors import UsageError

NAME_MAX_LENGTH = 128
NAME_CHARACTERS = "._+:@-"
# The first character is a letter or digit, so no hidden names, no `.`/`..`, no option look-alikes. `+` covers
# enroot's import names (nvidia+pytorch+24.01), `_` pyxis's (pyxis_<jobid>_<name>), `:` and `@` digest-pinned
# import names (ubuntu+sha256:HEX).
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9{re.escape(NAME_CHARACTERS)}]{{0,{NAME_MAX_LENGTH - 1}}}")
RULE = (f"use letters, digits and '{NAME_CHARACTERS}', starting with a letter or digit, "
        f"at most {NAME_MAX_LENGTH} characters")


def is_valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def validate_name(name: str) -> str:
    """Return `name` if it is a valid container name, else raise a one-line UsageError."""
    if not name:
        raise UsageError("invalid container name: the name is empty")
    if "/" in name:
        raise UsageError(f"invalid container name {name!r}: it must not contain '/'")
    if len(name) > NAME_MAX_LENGTH:
        raise UsageError(f"invalid container name {name[:20]!r}...: longer than {NAME_MAX_LENGTH} characters")
    if not is_valid_name(name):
        raise UsageError(f"invalid container name {name!r}", hint=RULE)
    return name
