#!/usr/bin/env python3
"""The merge planner alone (`layers.MergePlanner`) over generated headers: CPU µs per path and bytes per path.

    python bench/planner.py                       # 500,000 paths in 4 layers, three shapes
    python bench/planner.py --against OLD.py      # and, interleaved, another version of layers.py
                                                  # (e.g. `git show main:pyenroot/image/layers.py > OLD.py`)

Shapes: `separate` (each layer its own tree, directories of 200 files), `shared` (every layer adds files to
the same directories, so the merged tree of upper layers is looked into), `one-layer` (all paths in one
layer), `small-dirs` (one layer, 4 files a directory, 10 directories a package, thousands of packages in
one directory, like node_modules), `shuffled` (one layer, files in random order: the table's worst case).
Times are CPU seconds (the machine is shared), the minimum of --repeat runs; memory is tracemalloc's,
retained after the last layer and at the peak.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import random
import sys
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyenroot.image import layers  # noqa: E402

SHAPES = ("separate", "shared", "one-layer", "small-dirs", "shuffled")


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("layers_against", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def headers(mod: ModuleType, shape: str, layer: int, count: int) -> list:
    if shape == "small-dirs":
        return small_dirs(mod, count)
    root = "usr/lib/python3/shared" if shape == "shared" else f"usr/lib/python3/layer{layer}"
    dirs = [mod.Header(root, mod.DIR)]
    files = []
    for i in range(count):
        if i % 200 == 0:
            dirs.append(mod.Header(f"{root}/pkg{i // 200:05d}", mod.DIR))
        files.append(mod.Header(f"{root}/pkg{i // 200:05d}/mod{layer}_{i:06d}.py", mod.FILE))
    if shape == "shuffled":
        random.Random(layer).shuffle(files)
    return dirs + files


def small_dirs(mod: ModuleType, count: int) -> list:
    entries = []
    for i in range(count):
        directory = f"app/node_modules/pkg{i // 40}/lib{i // 4 % 10}"
        if i % 4 == 0:
            entries.append(mod.Header(directory, mod.DIR))
        entries.append(mod.Header(f"{directory}/f{i % 4}.js", mod.FILE))
    return entries


def run(mod: ModuleType, shape: str, paths: int, layer_count: int, trace: bool) -> tuple[float, float, float]:
    """(CPU µs per path, retained bytes per path, peak bytes per path; 0 without `trace`)."""
    count = 1 if shape in ("one-layer", "small-dirs", "shuffled") else layer_count
    generated = [headers(mod, shape, number, paths // count) for number in range(count)]
    gc.collect()
    if trace:
        tracemalloc.start()
    planner, seconds = mod.MergePlanner(), 0.0
    for number, entries in enumerate(generated):
        planner.start_layer(f"layer {number}")
        start = time.process_time()
        for header in entries:
            planner.decide(header)
        planner.finish_layer()
        seconds += time.process_time() - start
    planner.finish()
    retained = peak = 0
    if trace:
        retained, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return seconds / paths * 1e6, retained / paths, peak / paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", type=int, default=500_000)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shape", action="append", choices=SHAPES, help="default: all but shuffled")
    parser.add_argument("--against", metavar="LAYERS_PY", help="another layers.py to compare with")
    args = parser.parse_args()
    versions = {"this": layers, **({"against": load(args.against)} if args.against else {})}
    for shape in args.shape or SHAPES[:4]:
        paths = min(args.paths, 100_000) if shape == "shuffled" else args.paths
        times: dict[str, list[float]] = {name: [] for name in versions}
        for _ in range(args.repeat):
            for name, mod in versions.items():
                times[name].append(run(mod, shape, paths, args.layers, trace=False)[0])
        for name, mod in versions.items():
            _, retained, peak = run(mod, shape, paths, args.layers, trace=True)
            print(f"{shape:9} {name:7} {paths} paths: {min(times[name]):.2f} µs/path (CPU, min of {args.repeat}); "
                  f"retained {retained:.0f} B/path, peak {peak:.0f} B/path", flush=True)
        if args.against:
            print(f"{shape:9} this / against: {min(times['this']) / min(times['against']):.2f}x time", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
