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

and the container's overhead over bare srun. Targets: cached image under 0.3 s, existing named container
under 0.1 s per step.

    python bench/slurm.py              # 20 runs each
    python bench/slurm.py --repeat 5   # fewer runs
    python bench/slurm.py --quick      # 5 runs, only bare srun and the writable unnamed cases
"""

from __future__ import annotations

import argparse
import contextlib
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


def build_plugin(workdir: Path) -> Path:
    build = workdir / "spank-build"
    shutil.copytree(REPO / "spank_plugin", build, ignore=shutil.ignore_patterns("*.so"))
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
def bench_cluster(prefix: str, controller_port: int) -> Iterator[tuple[Path, LocalRegistry, users.TestUser,
                                                                       devcluster.ClusterSpec]]:
    """A scratch directory, a loopback registry, the test account with a private home and a two-node cluster
    with the plugin from this tree (its nodes see the scratch directory); all gone afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    workdir.chmod(0o755)
    registry = LocalRegistry(workdir / "registry").start()
    spec = None
    try:
        wrapper = users.install_wrapper(workdir / "install")
        account = users.ensure_user()
        user = users.make_private_home(workdir, account, wrapper, "home")
        spec = devcluster.ClusterSpec(directory=workdir / "cluster", plugin=build_plugin(workdir),
                                      plugin_args={"pyenroot": str(wrapper)}, controller_port=controller_port,
                                      first_node_port=controller_port + 1, shared_tmp_paths=(workdir,))
        devcluster.up(spec)
        yield workdir, registry, user, spec
    finally:
        if spec is not None:
            devcluster.down(spec)
        registry.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def timed(user: users.TestUser, argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = user.run(argv, env=env, timeout=600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=None, help="runs of each case (20; 5 with --quick)")
    parser.add_argument("--quick", action="store_true", help="only bare srun and the writable unnamed cases")
    args = parser.parse_args()
    repeat = args.repeat or (5 if args.quick else 20)
    with bench_cluster("pyenroot-bench-slurm-", 26817) as (workdir, registry, user, spec):
        image = push_busybox(workdir, registry)
        debian = push_debian(registry)
        env = {"SLURM_CONF": str(spec.slurm_conf), "ENROOT_ALLOW_HTTP": "y"}
        # Warm up: the images imported (cached) and the named container created.
        timed(user, ["srun", f"--container-image={image}", "true"], env)
        timed(user, ["srun", f"--container-image={debian}", "true"], env)
        timed(user, ["srun", f"--container-image={image}", "--container-name=bench", "true"], env)
        cases: dict[str, Case] = {"srun true": (["srun", "true"], {})}
        if not args.quick:
            cases |= {
                "srun --container-image (cached) true": (["srun", f"--container-image={image}", "true"], {}),
                "srun --container-name (existing) true": (["srun", "--container-name=bench", "true"], {}),
            }
            cases |= {name.replace("srun", "srun -n8", 1): ([argv[0], "-n8", *argv[1:]], extra)
                      for name, (argv, extra) in cases.items()}
        cases |= writable_cases({"busybox": image, "debian 180 MB": debian})
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeat):
            for name, (argv, extra) in cases.items():
                times[name].append(timed(user, argv, env | extra))
        report(times)
    return 0


def report(times: dict[str, list[float]]) -> None:
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'case':75} {'median':>8} {'min':>8} {'max':>8} {'overhead':>9}")
    for name, values in times.items():
        floor = medians["srun -n8 true" if "-n8" in name else "srun true"]
        overhead = medians[name] - floor
        print(f"{name:75} {medians[name]:8.3f} {min(values):8.3f} {max(values):8.3f} {overhead:+9.3f}")


if __name__ == "__main__":
    sys.exit(main())
