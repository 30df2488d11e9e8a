"""The pure parts of the start benchmark (bench/start.py, bench/peers.py): order, statistics, verdicts, configs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"pyenroot_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved  # the script puts bench/ first on the path: keep it from shadowing other modules
    return module


@pytest.fixture(scope="module")
def start():
    return load("start")


@pytest.fixture(scope="module")
def peers():
    return load("peers")


HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
LEGACY = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"


def test_cgroup_layouts_choose_the_podman_runtime(peers):
    assert peers.cgroup_mode(HYBRID) == "hybrid"
    assert peers.cgroup_mode(UNIFIED) == "unified"
    assert peers.cgroup_mode(LEGACY) == "legacy"
    assert peers.podman_runtime("unified") == "crun"
    assert peers.podman_runtime("hybrid") == "runc"  # crun refuses hybrid layouts


def test_podman_configs_need_no_systemd_and_use_a_short_runroot(peers):
    configs = peers.podman_configs("runc", Path("/tmp/pyb-x"))
    assert 'cgroup_manager = "cgroupfs"' in configs["containers.conf"]
    assert 'events_logger = "file"' in configs["containers.conf"]
    assert 'runtime = "runc"' in configs["containers.conf"]
    assert 'driver = "overlay"' in configs["storage.conf"]
    assert 'runroot = "/tmp/pyb-x"' in configs["storage.conf"]


def test_rounds_rotate_so_every_case_runs_in_every_position(start):
    cases = [start.Case(name, [name]) for name in "abc"]
    orders = [[case.label for case in order] for order in start.rounds(cases, 4)]
    assert orders == [list("abc"), list("bca"), list("cab"), list("abc")]


def test_summary_has_median_quartiles_and_range(start):
    summary = start.summarize("x", [5.0, 1.0, 3.0, 2.0, 4.0])
    assert (summary.median, summary.q1, summary.q3, summary.low, summary.high, summary.runs) == (3, 2, 4, 1, 5, 5)
    single = start.summarize("y", [7.0])
    assert (single.median, single.q1, single.q3) == (7.0, 7.0, 7.0)


def floor_and_ours(start, ours: float) -> tuple[list, dict]:
    cases = [start.Case(start.FLOOR[0], []), start.Case(start.FLOOR[1], []), start.Case(start.OURS["container"], [])]
    return cases, {start.FLOOR[0]: [2.0], start.FLOOR[1]: [20.0], start.OURS["container"]: [ours]}


def test_verdict_on_the_floor_target(start):
    cases, times = floor_and_ours(start, 40.0)
    assert "= 1.82 (target <= 2: met)" in start.verdicts(cases, times)[0]
    cases, times = floor_and_ours(start, 50.0)
    assert "NOT met" in start.verdicts(cases, times)[0]


def test_verdict_on_the_direct_start_target(start):
    cases, times = floor_and_ours(start, 40.0)
    cases.append(start.Case(start.OURS["sqsh"], []))
    times[start.OURS["sqsh"]] = [58.0]
    assert "`start IMAGE.sqsh true` / `start NAME true` = 1.45 (target <= 1.5: met)" in start.verdicts(cases, times)[1]
    times[start.OURS["sqsh"]] = [62.0]
    assert "= 1.55 (target <= 1.5: NOT met)" in start.verdicts(cases, times)[1]


def test_verdicts_compare_each_peer_with_the_same_form_of_start(start):
    cases, times = floor_and_ours(start, 50.0)
    versus = start.OURS["container"]
    cases += [start.Case("peer fast", [], versus), start.Case("peer slow", [], versus)]
    times.update({"peer fast": [10.0], "peer slow": [150.0]})
    lines = start.verdicts(cases, times)
    assert any("`peer fast`: 50.0 vs 10.0 ms, pyenroot 5.00x slower" in line for line in lines)
    assert any("`peer slow`: 50.0 vs 150.0 ms, pyenroot 3.00x faster" in line for line in lines)


def test_table_lists_peers_that_did_not_run(start):
    cases, times = floor_and_ours(start, 44.0)
    lines = start.table(cases, times, {"udocker": "udocker is not installed (make bench-deps)"})
    assert lines[-1].startswith("| udocker | did not run: udocker is not installed")
    assert "| 2.00x |" in next(line for line in lines if line.startswith(f"| {start.OURS['container']} |"))


def test_random_file_is_exactly_its_size(start):
    source = start.RandomFile(100_000)
    chunks = [source.read(30_000) for _ in range(5)]
    assert [len(chunk) for chunk in chunks] == [30_000, 30_000, 30_000, 10_000, 0]


def test_big_image_size_is_capped(start, tmp_path):
    assert "over the 3.0 GB limit" in start.big_image_problem(tmp_path, 3.5)


def test_quick_means_fewer_rounds_and_no_big_image(start):
    quick = start.parse_args(["--quick"])
    assert (quick.repeat, quick.big) == (5, False)
    full = start.parse_args([])
    assert (full.repeat, full.big) == (20, True)


class FakeRunner:
    """Times every command as 1 ms; `flaky` fails from its second run on."""

    def __init__(self):
        self.calls: list[str] = []

    def timed(self, argv: list[str]) -> float:
        self.calls.append(argv[0])
        if argv[0] == "flaky" and self.calls.count("flaky") > 1:
            raise subprocess.CalledProcessError(1, argv, stderr=b"something\nit broke\n")
        return 1.0


def test_a_case_that_fails_mid_run_is_dropped_and_reported(start):
    cases = [start.Case("steady", ["steady"]), start.Case("flaky", ["flaky"])]
    failed: dict[str, str] = {}
    runner = FakeRunner()
    times = start.measure(runner, cases, 3, lambda message: None, failed)
    assert times["steady"] == [1.0, 1.0, 1.0]
    assert failed == {"flaky": "failed in round 2: it broke"}
    assert runner.calls.count("flaky") == 2
