"""A compact table of path -> small int for the merge planner (pure): a million paths in tens of MB, not hundreds.

Paths are grouped by parent directory. The children of the few directories in use ("live", bounded in number)
are a plain dict of base name -> value; those of every other directory are packed into one string of the
base names joined by "/" (which no base name contains) and one bytes object of fixed-width values, so a
packed path costs its base name's characters plus a few bytes, with no Python object of its own. Any access
to a packed directory thaws it into the live set, and the least recently used live directory is packed
again. Archives list a directory's entries together (and come back to a parent between its subdirectories,
which keeps it in use), so a layer thaws each directory about once; in any other order the table is slower
(more thawing), never different.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

_TYPECODES = {1: "B", 2: "H", 4: "I"}
_SEPARATOR = "/"


def join_path(directory: str, name: str) -> str:
    return f"{directory}{_SEPARATOR}{name}" if directory else name


class PathTable:
    """path -> int in [1, 2**(8*width)), 0 meaning none, grouped by directory; see the module docstring."""

    def __init__(self, width: int = 1, live_limit: int = 64):
        self._typecode = _TYPECODES[width]
        self._width = width
        self._live_limit = max(1, live_limit)
        self._live: dict[str, dict[str, int]] = {}  # in order of use: the least recent is packed first
        self._packed: dict[str, tuple[str, bytes]] = {}

    def value(self, path: str) -> int:
        """The path's value, 0 where it has none."""
        directory, _, name = path.rpartition(_SEPARATOR)
        live = self._live
        children = live.pop(directory, None)
        if children is None:
            if directory not in self._packed:
                return 0
            children = self._thaw(directory)
        else:
            live[directory] = children  # (re-inserted: now the most recently used)
        return children.get(name, 0)

    def __contains__(self, path: str) -> bool:
        return self.value(path) != 0

    def __setitem__(self, path: str, value: int) -> None:
        directory, _, name = path.rpartition(_SEPARATOR)
        self.children(directory)[name] = value

    def children(self, directory: str) -> dict[str, int]:
        """The live dict of name -> value of `directory` (created if needed), to change in place. It stays the
        table's only until the next call that touches another directory (which may pack it)."""
        live = self._live
        children = live.pop(directory, None)
        if children is None:
            return self._thaw(directory)
        live[directory] = children
        return children

    def __len__(self) -> int:
        return sum(map(len, self._live.values())) + sum(len(v) for _, v in self._packed.values()) // self._width

    # ------------------------------------------------------------------------------ thaw and pack

    def _thaw(self, directory: str) -> dict[str, int]:
        """Make `directory` live (empty if the table has nothing there), packing the least recently used."""
        packed = self._packed.pop(directory, None)
        children = {} if packed is None else self._unpacked(packed)
        if len(self._live) >= self._live_limit:
            oldest = next(iter(self._live))
            self._pack(oldest, self._live.pop(oldest))
        self._live[directory] = children
        return children

    def _pack(self, directory: str, children: dict[str, int]) -> None:
        if children:  # a directory with nothing in it is simply absent
            self._packed[directory] = (_SEPARATOR.join(children), array(self._typecode, children.values()).tobytes())

    def pack(self) -> None:
        """Pack every live directory (after a layer: what stays between layers should be small)."""
        for directory, children in self._live.items():
            self._pack(directory, children)
        self._live.clear()

    # -------------------------------------------------------------------------------- iteration

    def _unpacked(self, packed: tuple[str, bytes]) -> dict[str, int]:
        names, values = packed
        return dict(zip(names.split(_SEPARATOR), array(self._typecode, values), strict=True))

    def items(self) -> Iterator[tuple[str, int]]:
        """Every (path, value), directory by directory. The table must not change while this runs."""
        for directory, children in self._groups():
            for name, value in children.items():
                yield join_path(directory, name), value

    def _groups(self) -> Iterator[tuple[str, dict[str, int]]]:
        yield from self._live.items()
        for directory, packed in self._packed.items():
            yield directory, self._unpacked(packed)

    def drain(self) -> Iterator[tuple[str, dict[str, int]]]:
        """Empty the table directory by directory, yielding (directory, {name: value}), so that its memory is
        given back while the caller consumes it. (The keys are listed first: taking a dict's first key again
        and again after pops would walk over every removed entry each time.)"""
        for directory in list(self._live):
            yield directory, self._live.pop(directory)
        for directory in list(self._packed):
            yield directory, self._unpacked(self._packed.pop(directory))
