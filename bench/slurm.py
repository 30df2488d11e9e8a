#!/usr/bin/env python3
"""Benchmark what the SPANK plugin adds to a Slurm step, on a real local two-node cluster.

In one run (as root; steps run as the unprivileged test account), interleaved, --repeat times each
(default 20), the median and spread of:

- `srun true` (the floor)
- `srun --container-image=<cached image> true` (unnamed container; the image is imported once beforehand)
- `srun --container-name=<existing> true` (a named container that exists)
- and `srun -n8` of each
- `srun --container-image=<cached image> --container-writable true`, for the busybox image and for Debian
  minbase (180 MB), each as it starts now (the image unpacked into memory) and as it started before
  (squashfuse + overlay, PYENROOT_SQSH_WRITABLE=overlay, which cannot rename the image's directories)
- the same steps inside one job (`salloc --no-shell`, then `srun --jobid=JOB ...`), where the job's later steps
  reuse the tag its first step resolved (no registry request), over `srun --jobid=JOB true`

and the container's overhead over bare srun (each srun above is a job of its own: its step is the job's first).
Last, one line per target with its verdict (met or missed) and the figure.
Targets (issue 14): cached unnamed image <= +0.10 s, existing named container <= +0.05 s, writable unnamed
(busybox) <= +0.15 s.

    python bench/slurm.py              # 20 runs each
    python bench/slurm.py --repeat 5   # fewer runs
    python bench/slurm.py --quick      # 5 runs, only bare srun and the writable unnamed cases
    python bench/slurm.py --no-debian  # without the 180 MB image
    python bench/slurm.py --against /tmp/base   # also another checkout, every case interleaved with it
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyenroot.devtools import devcluster, imagebuilder, rootfs  # noqa: E402
from pyenroot.devtools.registry import LocalRegistry  # noqa: E402
from tests.helpers import users  # noqa: E402


def build_plugin(workdir: Path, tree: Path = REPO) -> Path:
    build = workdir / "spank-build"
    shutil.copytree(tree / "spank_plugin", build, ignore=shutil.ignore_patterns("*.so"))
    subprocess.run(["make", "-s", "-C", str(build)], check=True)
    build.chmod(0o755)
    return build / "spank_pyenroot.so"


def push_busybox(workdir: Path, registry: LocalRegistry) -> str:
    root = rootfs.busybox_rootfs(workdir / "rootfs-busybox")
    image = imagebuilder.build_image([imagebuilder.tar_of_directory(root)], env=["PATH=/usr/bin:/bin"])
    imagebuilder.Pusher(registry.url).image("bench/busybox", "latest", image)
    return f"{registry.host}#bench/busybox:latest"


def push_debian(registry: LocalRegistry) -> str:
    image = imagebuilder.build_image([rootfs.debian_rootfs_tar().read_bytes()], cmd=["/bin/bash"])
    imagebuilder.Pusher(registry.url).image("bench/debian", "bookworm", image)
    return f"{registry.host}#bench/debian:bookworm"


# (argv, extra environment) of one case
Case = tuple[list[str], dict[str, str]]
OLD_WRITABLE = {"PYENROOT_SQSH_WRITABLE": "overlay"}  # the overlay that writable starts used before


def writable_cases(images: dict[str, str]) -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for label, image in images.items():
        argv = ["srun", f"--container-image={image}", "--container-writable", "true"]
        cases[f"srun --container-image ({label}) --container-writable true: unpack"] = (argv, {})
        cases[f"srun --container-image ({label}) --container-writable true: overlay (before)"] = (argv, OLD_WRITABLE)
    return cases


@contextlib.contextmanager
def bench_cluster(prefix: str, controller_port: int, tree: Path = REPO) -> Iterator[
        tuple[Path, LocalRegistry, users.TestUser, devcluster.ClusterSpec]]:
    """A scratch directory, a loopback registry, the test account with a private home and a two-node cluster
    with the plugin and the package from `tree` (its nodes see the scratch directory); all gone afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    workdir.chmod(0o755)
    registry = LocalRegistry(workdir / "registry").start()
    spec = None
    try:
        wrapper = users.install_wrapper(workdir / "install", tree)
        account = users.ensure_user()
        user = users.make_private_home(workdir, account, wrapper, "home")
        spec = devcluster.ClusterSpec(directory=workdir / "cluster", plugin=build_plugin(workdir, tree),
                                      plugin_args={"pyenroot": str(wrapper)}, controller_port=controller_port,
                                      first_node_port=controller_port + 1, shared_tmp_paths=(workdir,))
        devcluster.up(spec)
        yield workdir, registry, user, spec
    finally:
        if spec is not None:
            devcluster.down(spec)
        registry.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def allocate(user: users.TestUser, env: dict[str, str]) -> str:
    """A one-node allocation without a shell (its steps come from `srun --jobid`): the job's id."""
    done = user.run(["salloc", "--no-shell", "-N1", "-w", "node1", "--oversubscribe"], env=env, timeout=120)
    found = re.search(r"Granted job allocation (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"salloc failed:\n{done.stderr}")
    return found.group(1)


def in_job(cases: dict[str, Case], job: str) -> dict[str, Case]:
    """The same steps inside the job (their names start with `srun --jobid`)."""
    return {name.replace("srun", "srun --jobid", 1): ([argv[0], f"--jobid={job}", "--oversubscribe", *argv[1:]], extra)
            for name, (argv, extra) in cases.items()}


def timed(user: users.TestUser, argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = user.run(argv, env=env, timeout=600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr}")
    return elapsed


def prepare(cluster, args) -> tuple[users.TestUser, dict[str, str], dict[str, Case]]:
    """Push the images, warm the cache up (images imported, the named container made, a job allocated and its
    first step run) and list the cases: (the user, the environment of srun, the cases by name)."""
    workdir, registry, user, spec = cluster
    image = push_busybox(workdir, registry)
    writable = {"busybox": image} if args.no_debian else {"busybox": image, "debian 180 MB": push_debian(registry)}
    env = {"SLURM_CONF": str(spec.slurm_conf), "ENROOT_ALLOW_HTTP": "y"}
    for uri in writable.values():
        timed(user, ["srun", f"--container-image={uri}", "true"], env)
    timed(user, ["srun", f"--container-image={image}", "--container-name=bench", "true"], env)
    job = allocate(user, env)
    one_step: dict[str, Case] = {
        "srun true": (["srun", "true"], {}),
        "srun --container-image (cached) true": (["srun", f"--container-image={image}", "true"], {}),
        "srun --container-name (existing) true": (["srun", "--container-name=bench", "true"], {}),
    }
    cases: dict[str, Case] = {"srun true": one_step["srun true"]}
    if not args.quick:
        cases |= one_step
        cases |= {name.replace("srun", "srun -n8", 1): ([argv[0], "-n8", *argv[1:]], extra)
                  for name, (argv, extra) in one_step.items()}
    cases |= writable_cases(writable)
    if not args.quick:
        unpack = {name: case for name, case in writable_cases({"busybox": image}).items()
                  if name.endswith("unpack")}
        cases |= in_job(one_step | unpack, job)
    for argv, extra in in_job({"first": one_step["srun --container-image (cached) true"]}, job).values():
        timed(user, argv, env | extra)  # the job's first step resolves the tag
    return user, env, cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=None, help="runs of each case (20; 5 with --quick)")
    parser.add_argument("--quick", action="store_true", help="only bare srun and the writable unnamed cases")
    parser.add_argument("--no-debian", action="store_true", help="leave out the 180 MB image")
    parser.add_argument("--against", type=Path, metavar="TREE",
                        help="another checkout (e.g. `git worktree add /tmp/base main`): a second cluster runs its "
                             "plugin and package, every case alternates between the two")
    args = parser.parse_args()
    repeat = args.repeat or (5 if args.quick else 20)
    trees = {"this tree": REPO} | ({f"{args.against}": args.against.resolve()} if args.against else {})
    with contextlib.ExitStack() as stack:
        sides = {label: prepare(stack.enter_context(bench_cluster("pyenroot-bench-slurm-", 26817 + 100 * i, tree)),
                                args)
                 for i, (label, tree) in enumerate(trees.items())}
        times: dict[str, dict[str, list[float]]] = {label: {name: [] for name in cases}
                                                    for label, (_, _, cases) in sides.items()}
        for run in range(repeat):
            for name in times["this tree"]:
                for label in (list(sides) if run % 2 == 0 else list(sides)[::-1]):  # who goes first alternates
                    user, env, cases = sides[label]
                    argv, extra = cases[name]
                    times[label][name].append(timed(user, argv, env | extra))
    for label, found in times.items():
        if len(times) > 1:
            print(f"== {label}")
        report(found)
    print("\n".join(target_lines(times["this tree"])))
    return 0


# issue 14's targets: (case, the most it may add over its floor in seconds)
TARGETS = (
    ("srun --container-image (cached) true", 0.10),
    ("srun --container-name (existing) true", 0.05),
    ("srun --container-image (busybox) --container-writable true: unpack", 0.15),
)


def floor_of(name: str) -> str:
    """The bare srun a case is measured over: `srun -n8 true`, `srun --jobid true` or `srun true`."""
    return next(f for f in ("srun -n8 true", "srun --jobid true", "srun true") if name.startswith(f[:-5]))


def target_lines(times: dict[str, list[float]]) -> list[str]:
    """This tree's verdict on each target it measured: the median over the median of its floor."""
    lines = ["targets (this tree, medians over bare srun, each step its job's first):"]
    for name, limit in TARGETS:
        if name not in times:
            continue
        overhead = statistics.median(times[name]) - statistics.median(times[floor_of(name)])
        verdict = "met" if overhead <= limit + 0.0005 else "missed"  # (printed to the ms)
        lines.append(f"- {name}: {overhead:+.3f} s (target <= +{limit:.2f}: {verdict})")
    return lines


def report(times: dict[str, list[float]]) -> None:
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'case':75} {'median':>8} {'min':>8} {'max':>8} {'overhead':>9}")
    for name, values in times.items():
        overhead = medians[name] - medians[floor_of(name)]
        print(f"{name:75} {medians[name]:8.3f} {min(values):8.3f} {max(values):8.3f} {overhead:+9.3f}")


if __name__ == "__main__":
    sys.exit(main())
