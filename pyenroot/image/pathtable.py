"""A compact map from image paths to small values, for the merge planner (pure).

A million-file image would cost a Python str per path in every table (50 bytes + the path). Here a path is
keyed by its parent directory's number (4 bytes) and its base name, so the directory part of each path is
held once, by `PathKeys`, however many entries sit below it. Tables of one planner share one `PathKeys`.
"""

from __future__ import annotations

from collections.abc import Iterator

_ID_BYTES = 4
_ENCODING, _ERRORS = "utf-8", "surrogateescape"  # tar names that are not UTF-8 survive the round trip


class PathKeys:
    """Numbers directories (the parents of keyed paths) and turns paths into compact keys and back."""

    def __init__(self) -> None:
        self._ids: dict[str, bytes] = {"": (0).to_bytes(_ID_BYTES, "little")}
        self._dirs: list[str] = [""]

    def key(self, path: str) -> bytes:
        parent, _, base = path.rpartition("/")
        prefix = self._ids.get(parent)
        if prefix is None:
            prefix = len(self._dirs).to_bytes(_ID_BYTES, "little")
            self._ids[parent] = prefix
            self._dirs.append(parent)
        return prefix + base.encode(_ENCODING, _ERRORS)

    def path(self, key: bytes) -> str:
        parent = self._dirs[int.from_bytes(key[:_ID_BYTES], "little")]
        base = key[_ID_BYTES:].decode(_ENCODING, _ERRORS)
        return f"{parent}/{base}" if parent else base


class PathTable:
    """A dict of path -> int with compact keys; the subset of dict's interface the planner uses."""

    __slots__ = ("_keys", "_values")

    def __init__(self, keys: PathKeys) -> None:
        self._keys = keys
        self._values: dict[bytes, int] = {}

    def get(self, path: str, default: int | None = None) -> int | None:
        return self._values.get(self._keys.key(path), default)

    def __getitem__(self, path: str) -> int:
        return self._values[self._keys.key(path)]

    def __setitem__(self, path: str, value: int) -> None:
        self._values[self._keys.key(path)] = value

    def __contains__(self, path: str) -> bool:
        return self._keys.key(path) in self._values

    def __len__(self) -> int:
        return len(self._values)

    def setdefault(self, path: str, value: int) -> int:
        return self._values.setdefault(self._keys.key(path), value)

    def items(self) -> Iterator[tuple[str, int]]:
        to_path = self._keys.path
        for key, value in self._values.items():
            yield to_path(key), value

    def raw_items(self) -> Iterator[tuple[bytes, int]]:
        """(key, value) pairs, keys as `PathKeys.key` makes them: for copying between tables of one PathKeys."""
        return iter(self._values.items())

    def raw_get(self, key: bytes) -> int | None:
        return self._values.get(key)

    def raw_set(self, key: bytes, value: int) -> None:
        self._values[key] = value
