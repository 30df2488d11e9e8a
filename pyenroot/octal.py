"""The octal escapes that fstab(5) and /proc/self/mountinfo share (`\\040` for a space): pure."""

from __future__ import annotations

import re

_OCTAL = r"\\([0-7]{3})"  # compiled (and cached by re) only when a field has an escape


def unescape(field: str) -> str:
    """Decode octal escapes such as `\\040` (space)."""
    if "\\" not in field:
        return field
    return re.sub(_OCTAL, lambda m: chr(int(m.group(1), 8)), field)


def escape(field: str) -> str:
    """Encode space, tab, newline and backslash as octal (the inverse of `unescape` for those)."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in field)
