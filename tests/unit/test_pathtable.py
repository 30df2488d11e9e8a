"""The merge planner's compact path table: the same answers as a dict in any order, and a bound on memory."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import MutableMapping

import pytest

from pyenroot.image import layers as L
from pyenroot.image.pathtable import PathTable, join_path


class _Children(MutableMapping):
    """One directory's names -> values, written through to the reference's dict."""

    def __init__(self, values: dict[str, int], directory: str):
        self._values, self._directory = values, directory

    def __getitem__(self, name):
        return self._values[join_path(self._directory, name)]

    def __setitem__(self, name, value):
        self._values[join_path(self._directory, name)] = value

    def __delitem__(self, name):
        del self._values[join_path(self._directory, name)]

    def __iter__(self):
        return iter([p.rpartition("/")[2] for p in self._values if p.rpartition("/")[0] == self._directory])

    def __len__(self):
        return len(list(iter(self)))


class DictTable:
    """The reference: the table's interface over one plain dict of path -> value."""

    def __init__(self, width: int = 1, live_limit: int = 0):
        self._values: dict[str, int] = {}

    def value(self, path):
        return self._values.get(path, 0)

    def __contains__(self, path):
        return path in self._values

    def __setitem__(self, path, value):
        self._values[path] = value

    def children(self, directory):
        return _Children(self._values, directory)

    def __len__(self):
        return len(self._values)

    def items(self):
        return list(self._values.items())

    def pack(self):
        pass

    def drain(self):
        groups: dict[str, dict[str, int]] = {}
        for path, value in self._values.items():
            directory, _, name = path.rpartition("/")
            groups.setdefault(directory, {})[name] = value
        self._values = {}
        yield from groups.items()


def _random_paths(rng: random.Random, count: int) -> list[str]:
    dirs = ["", "a", "a/b", "a/b/c", "d", "d/e", "\udcff dir"]
    return [join_path(rng.choice(dirs), rng.choice(["x", "y", "b", "e", "c", "\u00e9t\u00e9", "n" * 30]))
            for _ in range(count)]


@pytest.mark.parametrize("live_limit", [1, 2, 64])
def test_table_matches_a_dict_in_random_order(live_limit):
    rng = random.Random(live_limit)
    table, reference = PathTable(width=4, live_limit=live_limit), DictTable()
    for path in _random_paths(rng, 3000):
        if rng.random() < 0.5:
            value = rng.randrange(1, 1 << 20)
            table[path] = value
            reference[path] = value
        assert table.value(path) == reference.value(path)
        if rng.random() < 0.1:
            directory = path.rpartition("/")[0]
            table.children(directory)["new"] = 1
            reference[join_path(directory, "new")] = 1
        if rng.random() < 0.05:
            table.pack()
    assert sorted(table.items()) == sorted(reference.items())
    assert len(table) == len(reference)
    drained = sorted((join_path(d, n), v) for d, children in table.drain() for n, v in children.items())
    assert drained == sorted(reference.items())
    assert not list(table.items()) and table.value("a/b") == 0


def test_root_and_one_byte_values_survive_packing():
    table = PathTable(width=1, live_limit=1)
    table[""] = 7
    table["top"] = 255
    table["a/b/c"] = 1
    table.pack()
    assert [table.value(p) for p in ("", "top", "a/b/c", "a/b")] == [7, 255, 1, 0]
    assert "a/b/c" in table and "a/b/d" not in table and table.value("nothing/here") == 0


# ------------------------------------------------------------------------------ the planner, any order


_NAMES = ["x", "y", "sub", ".wh.x", ".wh.sub", ".wh..wh..opq", ".wh..wh.aufs", ".wh.", "../esc"]
_DIRS = ["", "a", "a/sub", "b", "a/x"]
_KINDS = [L.FILE, L.FILE, L.DIR, L.DIR, L.SYMLINK, L.HARDLINK, L.FIFO, L.CHAR, L.OTHER]


def _random_layers(rng: random.Random) -> list[list[L.Header]]:
    layers = []
    for _ in range(rng.randint(1, 4)):
        entries = []
        for _ in range(rng.randint(1, 25)):
            name = join_path(rng.choice(_DIRS), rng.choice(_NAMES))
            kind = rng.choice(_KINDS)
            link = join_path(rng.choice(_DIRS), rng.choice(_NAMES[:3])) if kind == L.HARDLINK else ""
            entries.append(L.Header(("/" if rng.random() < 0.05 else "") + name, kind, link))
        layers.append(entries)
    return layers


def _plan(layers: list[list[L.Header]]) -> tuple:
    planner = L.MergePlanner()
    decisions, pending = [], []
    for number, entries in enumerate(layers):
        planner.start_layer(f"layer {number}")
        decisions += [planner.decide(header) for header in entries]
        pending.append(planner.finish_layer())
    links = planner.finish()
    probes = sorted({join_path(d, n) for d in _DIRS for n in _NAMES[:3]} | set(_DIRS[1:]))
    queries = [(p, planner.has_directory(p), planner.can_add_directory(p)) for p in probes]
    return decisions, pending, links, planner.unwritten_directories(), queries, planner.warnings


@pytest.mark.parametrize("seed", range(300))
def test_planner_decides_the_same_with_a_table_that_thaws_and_packs_all_the_time(monkeypatch, seed):
    """Random layers (whiteouts, opaque markers, hard links, conflicts) in random order: with one live
    directory at a time, every lookup thaws and packs, and the plan must equal the plain-dict one."""
    layers = _random_layers(random.Random(seed))
    monkeypatch.setattr(L, "PathTable", DictTable)
    expected = _plan(layers)
    monkeypatch.setattr(L, "PathTable", lambda width: PathTable(width, live_limit=1))
    assert _plan(layers) == expected


def _headers(count: int):
    yield L.Header("usr/share/data", L.DIR)
    for i in range(count):
        if i % 200 == 0:
            yield L.Header(f"usr/share/data/pkg{i // 200}", L.DIR)
        yield L.Header(f"usr/share/data/pkg{i // 200}/module_{i}.py", L.FILE)


def test_planner_keeps_a_few_tens_of_bytes_per_path():
    """What the planner holds after a layer and at its peak (paths of ~40 characters): plain dicts of str
    took ~135 bytes retained and ~185 at the peak; the packed table takes about 20, and at the peak the
    few live directories' dicts come on top."""
    count = 50_000
    tracemalloc.start()
    try:
        planner = L.MergePlanner()
        planner.start_layer("layer")
        for header in _headers(count):
            planner.decide(header)
        _, peak = tracemalloc.get_traced_memory()
        planner.finish_layer()
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert retained / count < 40 and peak / count < 80
