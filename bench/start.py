#!/usr/bin/env python3
"""Benchmark `pyenroot start ... true` against the kernel floor and the peer tools, all in the same run.

Each round runs every case once, in a rotated order (so drifting machine load and cache state hit every case
alike); --repeat rounds (default 20). The cases, all on one busybox root filesystem, as the unprivileged test
account with a private HOME:

- floor: `unshare -rm true` and `python -c pass` (the interpreter pyenroot runs on, same environment)
- `pyenroot start NAME true` (a created container) and `pyenroot start IMAGE.sqsh true` (direct start)
- `pyenroot start BIG.sqsh true`: a multi-GB image of incompressible files (not with --quick)
- Charliecloud `ch-run DIR` / `ch-run IMAGE.sqsh` / `ch-run BIG.sqsh`, rootless `podman run --rm`, `udocker run`
  (see bench/peers.py; `make bench-deps` installs them)

Prints a Markdown table: median, interquartile range, min-max, ratio to `pyenroot start NAME` and to the floor
(`unshare -rm true` + `python -c pass`), then the targets (`start NAME` <= 2x the floor, `start IMAGE.sqsh` <= 1.5x
`start NAME`). Peers that are missing or fail are listed with why.

    python bench/start.py            # 20 rounds and a 2 GB image
    python bench/start.py --quick    # 5 rounds, no big image
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from peers import (  # noqa: E402
    BenchImage,
    Peer,
    PeerUnavailable,
    Runner,
    StartCase,
    failure,
    peer_environment,
    usable_peers,
)

from pyenroot.devtools import rootfs  # noqa: E402

PYTHON = "/opt/pyenroot/venv/bin/python" if Path("/opt/pyenroot/venv/bin/python").exists() else sys.executable
FLOOR = ("unshare -rm true", "python -c pass")
OURS = {"container": "pyenroot start NAME true", "sqsh": "pyenroot start IMAGE.sqsh true"}
BIG_LIMIT_GB = 3.0
BIG_TARGET_MS = 1000.0
FLOOR_TARGET = 2.0  # `start NAME true` / floor
SQSH_TARGET = 1.5  # `start IMAGE.sqsh true` / `start NAME true`


# ------------------------------------------------------------------------------------------ images


def install_source(work: Path) -> Path:
    """A world-readable copy of the package with compiled bytecode (as an installed package would have)."""
    target = work / "src" / "pyenroot"
    shutil.copytree(REPO / "pyenroot", target, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(target)], check=True, capture_output=True)
    make_readable(work / "src")
    return work / "src"


def make_readable(top: Path) -> None:
    for path in [top, *top.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def make_image(work: Path) -> BenchImage:
    """The busybox root filesystem as a directory, a squashfs image and a tar (for the peers that import one)."""
    images = work / "images"
    tree = rootfs.busybox_rootfs(images / "busybox")
    sqsh = images / "busybox.sqsh"
    subprocess.run(["mksquashfs", str(tree), str(sqsh), "-all-root", "-noappend", "-comp", "lz4", "-quiet",
                    "-no-progress"], check=True, capture_output=True)
    tar = images / "busybox.tar"
    subprocess.run(["tar", "-C", str(tree), "--numeric-owner", "--owner=0", "--group=0", "-cf", str(tar), "."],
                   check=True)
    make_readable(images)
    return BenchImage(tree=tree, sqsh=sqsh, tar=tar)


class RandomFile:
    """A file-like object of `size` random bytes: incompressible and unique, so squashfs neither compresses
    nor deduplicates it and the image really is that large."""

    def __init__(self, size: int):
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return os.urandom(size)


def big_image_problem(directory: Path, gigabytes: float) -> str | None:
    """Why a big image cannot be built in `directory`, or None (it needs its size plus room to spare)."""
    if gigabytes > BIG_LIMIT_GB:
        return f"--big-gb {gigabytes} is over the {BIG_LIMIT_GB} GB limit"
    free = shutil.disk_usage(directory).free
    if free < gigabytes * 1e9 * 1.2 + 2e9:
        return f"not enough disk space: {free / 1e9:.1f} GB free for a {gigabytes} GB image"
    return None


def make_big_sqsh(tree: Path, out: Path, gigabytes: float) -> Path:
    """busybox plus `gigabytes` of 64 MiB random files, streamed as a tar into tar2sqfs (no copy on disk)."""
    chunk = 64 << 20
    count = max(1, round(gigabytes * 1e9 / chunk))
    jobs = str(os.cpu_count() or 1)
    with subprocess.Popen(["tar2sqfs", "--quiet", "--no-skip", "-c", "lz4", "-j", jobs, "--force", str(out)],
                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(tree, arcname=".")
            for index in range(count):
                info = tarfile.TarInfo(f"data/blob{index:04d}")
                info.size, info.mode = chunk, 0o644
                tar.addfile(info, RandomFile(chunk))
        proc.stdin.close()
        errors = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"tar2sqfs failed: {errors.strip()[-300:]}")
    out.chmod(0o644)
    return out


# ------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    label: str
    argv: list[str]
    versus: str | None = None  # the pyenroot case a peer case is compared with


def own_cases(image: BenchImage, big: Path | None) -> list[Case]:
    pyenroot = [PYTHON, "-m", "pyenroot"]
    cases = [Case(FLOOR[0], ["unshare", "-rm", "true"]), Case(FLOOR[1], [PYTHON, "-c", "pass"]),
             Case(OURS["container"], [*pyenroot, "start", "bench", "true"]),
             Case(OURS["sqsh"], [*pyenroot, "start", str(image.sqsh), "true"])]
    if big:
        cases.append(Case(big_label("pyenroot start", big), [*pyenroot, "start", str(big), "true"]))
    return cases


def big_label(tool: str, big: Path) -> str:
    return f"{tool} BIG.sqsh true ({big.stat().st_size / 1e9:.1f} GB)"


def peer_cases(peer: Peer, image: BenchImage, directory: Path, big: Path | None) -> list[Case]:
    found: list[StartCase] = list(peer.start_cases(image, directory))
    cases = [Case(case.label, case.argv, OURS[case.form]) for case in found]
    big_case = peer.sqsh_case(big, "BIG.sqsh") if big else None
    if big and big_case:
        cases.append(Case(big_case.label, big_case.argv, big_label("pyenroot start", big)))
    return cases


def warm_up(runner: Runner, cases: list[Case]) -> tuple[list[Case], dict[str, str]]:
    """Run each case once (fills caches, and finds the ones that fail here: those are reported, not timed)."""
    working, failed = [], {}
    for case in cases:
        result = runner.run(case.argv, check=False)
        if result.returncode == 0:
            working.append(case)
        else:
            failed[case.label] = failure(result)
    return working, failed


def rounds(cases: list[Case], repeat: int) -> Iterator[list[Case]]:
    """`repeat` rounds of every case, each round starting one case later, so no case always runs first."""
    for number in range(repeat):
        shift = number % len(cases)
        yield cases[shift:] + cases[:shift]


def measure(runner: Runner, cases: list[Case], repeat: int, progress: Callable[[str], None],
            failed: dict[str, str]) -> dict[str, list[float]]:
    """Times per case; a case that fails in a round is dropped (and listed in `failed`), the others go on."""
    times: dict[str, list[float]] = {case.label: [] for case in cases}
    for number, order in enumerate(rounds(cases, repeat), start=1):
        for case in order:
            if case.label in failed:
                continue
            try:
                times[case.label].append(runner.timed(case.argv))
            except subprocess.CalledProcessError as error:
                failed[case.label] = f"failed in round {number}: {failure(error)}"
        progress(f"round {number}/{repeat}")
    return times


# ------------------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class Summary:
    label: str
    median: float
    q1: float
    q3: float
    low: float
    high: float
    runs: int


def summarize(label: str, values: list[float]) -> Summary:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return Summary(label, statistics.median(values), q1, q3, min(values), max(values), len(values))


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "-"


def table(cases: list[Case], times: dict[str, list[float]], skipped: dict[str, str]) -> list[str]:
    stats = {case.label: summarize(case.label, times[case.label]) for case in cases}
    ours = stats[OURS["container"]].median
    floor = floor_ms(stats)
    lines = ["| case | median ms | IQR ms | min-max ms | vs start NAME | vs floor |",
             "|---|---:|---:|---:|---:|---:|"]
    for case in cases:
        s = stats[case.label]
        lines.append(f"| {case.label} | {s.median:.1f} | {s.q1:.1f}-{s.q3:.1f} | {s.low:.1f}-{s.high:.1f} | "
                     f"{ratio(s.median, ours)} | {ratio(s.median, floor)} |")
    for label, why in skipped.items():
        lines.append(f"| {label} | did not run: {why} | | | | |")
    return lines


def floor_ms(stats: dict[str, Summary]) -> float:
    return stats[FLOOR[0]].median + stats[FLOOR[1]].median


def verdicts(cases: list[Case], times: dict[str, list[float]]) -> list[str]:
    """The targets of the start benchmark, each with its numbers and whether this run met it."""
    median = {case.label: statistics.median(times[case.label]) for case in cases}
    ours = median[OURS["container"]]
    floor = median[FLOOR[0]] + median[FLOOR[1]]
    lines = [f"- `start NAME true` / floor (`unshare -rm true` + `python -c pass`) = {ours / floor:.2f} "
             f"(target <= {FLOOR_TARGET:g}: {'met' if ours / floor <= FLOOR_TARGET else 'NOT met'})"]
    if OURS["sqsh"] in median:
        sqsh = median[OURS["sqsh"]] / ours
        lines.append(f"- `start IMAGE.sqsh true` / `start NAME true` = {sqsh:.2f} "
                     f"(target <= {SQSH_TARGET:g}: {'met' if sqsh <= SQSH_TARGET else 'NOT met'})")
    for case in cases:
        if case.versus is None or case.versus not in median:
            continue
        theirs, mine = median[case.label], median[case.versus]
        word = "faster" if mine < theirs else "slower"
        factor = theirs / mine if mine < theirs else mine / theirs
        lines.append(f"- `{case.versus}` vs `{case.label}`: {mine:.1f} vs {theirs:.1f} ms, pyenroot {factor:.2f}x "
                     f"{word}")
    for case in cases:
        if case.label.startswith("pyenroot start BIG.sqsh"):
            ms = median[case.label]
            lines.append(f"- `{case.label}` {ms:.0f} ms (target < {BIG_TARGET_MS:.0f} ms: "
                         f"{'met' if ms < BIG_TARGET_MS else 'NOT met'})")
    return lines


def loadavg() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def header(args: argparse.Namespace, versions: list[str], load_before: str, load_after: str) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [f"{now}; {args.repeat} rounds, cases interleaved (rotated order each round); "
            f"{os.cpu_count()} CPUs, kernel {platform.release()}, Python {platform.python_version()}; "
            f"load average (1/5/15 min) {load_before} before, {load_after} after.",
            "Peers: " + ("; ".join(versions) if versions else "none") + ".", ""]


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, help="rounds (default 20, or 5 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short run: 5 rounds, no big image")
    parser.add_argument("--big-gb", type=float, default=2.0, help=f"size of the big image (<= {BIG_LIMIT_GB} GB)")
    parser.add_argument("--no-big", action="store_true", help="leave out the big image")
    parser.add_argument("--json", type=Path, help="also write the raw times (ms) to this file")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 5 if args.quick else 20
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.big = not (args.quick or args.no_big)
    return args


def prepare_peers(runner: Runner, peers: list[Peer], image: BenchImage, skipped: dict[str, str]) -> list[Peer]:
    loaded = []
    for peer in peers:
        try:
            peer.setup(runner)
            peer.load(runner, image)
            loaded.append(peer)
        except PeerUnavailable as error:
            skipped[peer.name] = str(error)
    return loaded


def run_benchmark(args: argparse.Namespace, work: Path, note: Callable[[str], None]) -> str:
    load_before = loadavg()
    work.chmod(0o755)  # the account must reach the images and the package copy below it
    source = install_source(work)
    image = make_image(work)
    peers, skipped = usable_peers()
    runner = Runner(work, extra_env={"PYTHONPATH": str(source)})
    runner.env.update(peer_environment(peers, runner))
    try:
        container = runner.home / ".local/share/enroot/bench"
        runner.run(["unsquashfs", "-no-progress", "-quiet", "-d", str(container), str(image.sqsh)])
        big = None
        if args.big:
            problem = big_image_problem(work, args.big_gb)
            if problem:
                skipped["pyenroot start BIG.sqsh"] = problem
            else:
                note(f"building a {args.big_gb} GB squashfs image")
                try:
                    big = make_big_sqsh(image.tree, work / "images" / "big.sqsh", args.big_gb)
                except RuntimeError as error:
                    skipped["pyenroot start BIG.sqsh"] = str(error)
        loaded = prepare_peers(runner, peers, image, skipped)
        cases = own_cases(image, big)
        for peer in loaded:
            cases += peer_cases(peer, image, container, big)
        versions = [peer.version(runner) for peer in loaded]
        cases, failed = warm_up(runner, cases)
        times = measure(runner, cases, args.repeat, note, failed)
        skipped.update(failed)
        cases = [case for case in cases if case.label not in failed]
        essential = [label for label in (*FLOOR, OURS["container"]) if label in failed]
        if essential:
            raise RuntimeError(f"{essential[0]}: {failed[essential[0]]}")
        if args.json:
            args.json.write_text(json.dumps(times, indent=1))
        lines = header(args, versions, load_before, loadavg()) + table(cases, times, skipped)
        return "\n".join([*lines, "", *verdicts(cases, times)])
    finally:
        for peer in peers:  # also those whose load failed: setup may have started something
            peer.cleanup(runner)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pyenroot-bench-start-", dir=os.environ.get("PYENROOT_BENCH_TMP")) as temp:
        try:
            print(run_benchmark(args, Path(temp), lambda message: print(message, file=sys.stderr, flush=True)))
        except (RuntimeError, subprocess.CalledProcessError) as error:
            detail = failure(error) if isinstance(error, subprocess.CalledProcessError) else str(error)
            print(f"bench/start.py: error: {detail}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
