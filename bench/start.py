#!/usr/bin/env python3
"""Benchmark `pyenroot start ... true` against the floor (`unshare -rm true`) and the peers that run here.

Times, interleaved, over --repeat runs each (default 20):

- `unshare -rm true` (the kernel floor) and `python -c pass` (Python's own start-up, same interpreter)
- `pyenroot start NAME true` (a created busybox root filesystem)
- `pyenroot start IMAGE.sqsh true` (direct start of a squashfs image; with --big, a multi-GB one)
- Charliecloud `ch-run DIR -- true` and `ch-run IMAGE.sqsh -- true`, rootless `podman run --rm`, `udocker run`
  on the same root filesystem, where they are installed and work

Prints median and spread (min-max) per case and ratios. Run as root, it drops to the test account for every
command, with a private HOME under a temporary directory.

    python bench/start.py                  # busybox, 20 runs each
    python bench/start.py --big --big-gb 2 # also a direct start of a 2 GB image
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyenroot.devtools import rootfs  # noqa: E402

TEST_USER = "pyenroot-tester"
PYTHON = "/opt/pyenroot/venv/bin/python" if Path("/opt/pyenroot/venv/bin/python").exists() else sys.executable


class Runner:
    """Runs commands as the test account with a private environment."""

    def __init__(self, work: Path):
        self.account = pwd.getpwnam(TEST_USER) if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
        self.home = work / "home"
        for sub in ("", ".local/share/enroot", ".config", ".cache", ".run", "tmp"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            for path in [self.home, *self.home.rglob("*")]:
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
        (self.home / ".run").chmod(0o700)
        self.env = {
            "HOME": str(self.home), "USER": self.account.pw_name, "LOGNAME": self.account.pw_name,
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8",
            "XDG_DATA_HOME": str(self.home / ".local/share"), "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_CACHE_HOME": str(self.home / ".cache"), "XDG_RUNTIME_DIR": str(self.home / ".run"),
            "TMPDIR": str(self.home / "tmp"), "PYTHONPATH": str(work / "src"),
        }

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        kwargs = {}
        if os.geteuid() == 0:
            kwargs = dict(user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[])
        return subprocess.run(argv, env=self.env, cwd=str(self.home), stdin=subprocess.DEVNULL,
                              capture_output=True, check=check, **kwargs)

    def timed(self, argv: list[str]) -> float:
        started = time.perf_counter()
        self.run(argv)
        return (time.perf_counter() - started) * 1000


def install_source(work: Path) -> None:
    """A world-readable copy of the package with compiled bytecode (as an installed package would have)."""
    target = work / "src" / "pyenroot"
    shutil.copytree(REPO / "pyenroot", target, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(target)], check=True, capture_output=True)
    for path in [work, *work.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def make_images(work: Path, big_gb: float | None) -> dict[str, Path]:
    tree = rootfs.busybox_rootfs(work / "images" / "busybox")
    images = {"tree": tree}
    images["sqsh"] = squash(tree, work / "images" / "busybox.sqsh")
    images["tar"] = work / "images" / "busybox.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(images["tar"]), "."], check=True)
    if big_gb:
        big = work / "images" / "big"
        shutil.copytree(tree, big, symlinks=True)
        data = big / "data"
        data.mkdir()
        for index in range(int(big_gb * 16)):  # 64 MiB files of incompressible, unique data (squashfs dedups)
            with open(data / f"blob{index:04d}", "wb") as handle:
                for _ in range(64):
                    handle.write(os.urandom(1 << 20))
        images["big"] = squash(big, work / "images" / "big.sqsh")
        shutil.rmtree(big)
    for path in [work / "images", *(work / "images").rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    return images


def squash(tree: Path, out: Path) -> Path:
    subprocess.run(["mksquashfs", str(tree), str(out), "-all-root", "-noappend", "-comp", "lz4", "-quiet",
                    "-no-progress"], check=True, capture_output=True)
    return out


def cases(runner: Runner, images: dict[str, Path]) -> dict[str, list[str]]:
    pyenroot = [PYTHON, "-m", "pyenroot"]
    found: dict[str, list[str]] = {
        "unshare -rm true": ["unshare", "-rm", "true"],
        "python -c pass": [PYTHON, "-c", "pass"],
        "pyenroot start NAME true": [*pyenroot, "start", "bench", "true"],
        "pyenroot start IMAGE.sqsh true": [*pyenroot, "start", str(images["sqsh"]), "true"],
    }
    if "big" in images:
        size = images["big"].stat().st_size / 1e9
        found[f"pyenroot start BIG.sqsh true ({size:.1f} GB)"] = [*pyenroot, "start", str(images["big"]), "true"]
    if shutil.which("ch-run"):
        found["ch-run DIR -- true"] = ["ch-run", str(runner.home / ".local/share/enroot/bench"), "--", "true"]
        found["ch-run IMAGE.sqsh -- true"] = ["ch-run", str(images["sqsh"]), "--", "true"]
    if shutil.which("podman"):
        found["podman run --rm"] = ["podman", "run", "--rm", "--network=none", "--cgroups=disabled",
                                        "localhost/pyenroot-bench", "true"]
    if shutil.which("udocker"):
        found["udocker run"] = ["udocker", "run", "pyenroot-bench", "true"]
    return found


def prepare_peers(runner: Runner, images: dict[str, Path], found: dict[str, list[str]]) -> dict[str, str]:
    """Import the image into the peers that need it; returns the cases that cannot run and why."""
    skipped = {}
    if "podman run --rm" in found:
        result = runner.run(["podman", "import", str(images["tar"]), "pyenroot-bench"], check=False)
        if result.returncode != 0:
            skipped["podman run --rm"] = result.stderr.decode(errors="replace").strip()[-200:]
    if "udocker run" in found:
        result = runner.run(["udocker", "import", str(images["tar"]), "pyenroot-bench"], check=False)
        if result.returncode == 0:
            result = runner.run(["udocker", "create", "--name=pyenroot-bench", "pyenroot-bench"], check=False)
        if result.returncode != 0:
            skipped["udocker run"] = result.stderr.decode(errors="replace").strip()[-200:]
    for name, argv in found.items():  # one warm-up run each; failures are reported, not fatal
        if name in skipped:
            continue
        result = runner.run(argv, check=False)
        if result.returncode != 0:
            skipped[name] = result.stderr.decode(errors="replace").strip()[-200:] or f"exit {result.returncode}"
    return skipped


def measure(runner: Runner, found: dict[str, list[str]], repeat: int, progress: Callable[[str], None]
            ) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in found}
    for round_number in range(repeat):
        for name, argv in found.items():  # interleaved, so drift in machine load hits every case alike
            times[name].append(runner.timed(argv))
        progress(f"round {round_number + 1}/{repeat}")
    return times


def report(times: dict[str, list[float]], skipped: dict[str, str]) -> str:
    median = {name: statistics.median(values) for name, values in times.items()}
    floor = median["unshare -rm true"] + median["python -c pass"]
    ours = median["pyenroot start NAME true"]
    lines = ["| case | median ms | min-max ms | vs pyenroot start NAME |", "|---|---:|---:|---:|"]
    for name, values in times.items():
        lines.append(f"| {name} | {median[name]:.1f} | {min(values):.1f}-{max(values):.1f} | "
                     f"{median[name] / ours:.2f}x |")
    for name, why in skipped.items():
        lines.append(f"| {name} | did not run: {why.splitlines()[-1] if why else '?'} | | |")
    lines.append("")
    lines.append(f"`start NAME true` / (`unshare -rm true` + `python -c pass`) = {ours / floor:.2f} (target <= 3)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--big", action="store_true", help="also start a multi-GB image directly")
    parser.add_argument("--big-gb", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyenroot-bench-start-") as temp:
        work = Path(temp)
        work.chmod(0o755)
        install_source(work)
        images = make_images(work, args.big_gb if args.big else None)
        runner = Runner(work)
        runner.run(["unsquashfs", "-no-progress", "-quiet", "-d",
                    str(runner.home / ".local/share/enroot/bench"), str(images["sqsh"])])
        found = cases(runner, images)
        skipped = prepare_peers(runner, images, found)
        for name in skipped:
            found.pop(name)
        times = measure(runner, found, args.repeat, lambda message: print(message, file=sys.stderr))
        print(report(times, skipped))
        if "podman run --rm" in found:
            runner.run(["podman", "rmi", "-f", "pyenroot-bench"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
