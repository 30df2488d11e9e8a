"""The merge planner's compact path table: same answers as a dict, and a bound on its memory per path."""

from __future__ import annotations

import tracemalloc

from pyenroot.image.layers import DIR, FILE, Header, MergePlanner
from pyenroot.image.pathtable import PathKeys, PathTable


def test_table_round_trips_paths_including_non_utf8_names():
    table = PathTable(PathKeys())
    paths = ["a", "a/b", "a/b/c.txt", "x/\udcff name", "top"]
    for number, path in enumerate(paths):
        table[path] = number
    assert sorted(table.items()) == sorted((p, n) for n, p in enumerate(paths))
    assert "a/b" in table and "a/c" not in table and table.get("a/c") is None
    assert table.setdefault("a", 9) == 0 and len(table) == len(paths)


def _headers(count: int):
    yield Header("usr/share/data", DIR)
    for i in range(count):
        if i % 200 == 0:
            yield Header(f"usr/share/data/pkg{i // 200}", DIR)
        yield Header(f"usr/share/data/pkg{i // 200}/module_{i}.py", FILE)


def test_planner_keeps_about_100_bytes_per_path():
    """The tree the planner keeps after a layer (paths of ~40 characters): a plain dict of str took ~125 bytes."""
    count = 20_000
    tracemalloc.start()
    try:
        planner = MergePlanner()
        planner.start_layer("layer")
        for header in _headers(count):
            planner.decide(header)
        planner.finish_layer()
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert retained / count < 112
