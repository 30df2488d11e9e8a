#!/usr/bin/env python3
"""Benchmark one step's image import on N simulated nodes: shared cache against node-local caches (fan-out).

As root; steps run as the unprivileged test account. For each N (default 4 and 8) a local cluster of N slurmd,
each with its own /tmp (tmpfs) and /run, runs `srun -N N --container-image=IMAGE true` with empty caches in two
layouts, --repeat times each, interleaved:

- shared: ENROOT_CACHE_PATH in the home that every node sees (the nodes share one import under a lock)
- node-local: ENROOT_CACHE_PATH in each node's own /tmp (plugstack fanout=auto: srun imports once and sbcasts
  the squashfs to the nodes)

A counting proxy in front of the registry counts blob downloads. The image: --layers layers of incompressible
data, --size MB in all. Target: node-local downloads each blob once per job and takes at most 1.3x the shared
layout's time.

    python bench/scale.py                       # N = 4 and 8, 200 MB in 10 layers, 2 runs each
    python bench/scale.py --nodes 4 --size 50   # smaller
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.slurm import build_plugin  # noqa: E402
from pyenroot.devtools import devcluster, imagebuilder, rootfs  # noqa: E402
from pyenroot.devtools.registry import LocalRegistry  # noqa: E402
from tests.helpers import users  # noqa: E402
from tests.helpers.faultproxy import FaultProxy  # noqa: E402

NODE_CACHE = "/tmp/pyenroot-scale-cache"


def push_image(workdir: Path, registry: LocalRegistry, size_mb: int, layers: int) -> imagebuilder.Image:
    """busybox plus `layers` - 1 layers of random bytes (nothing to gain from compression, like real data)."""
    import io
    import tarfile

    base = imagebuilder.tar_of_directory(rootfs.busybox_rootfs(workdir / "rootfs-busybox"))
    tars = [base]
    per_layer = size_mb * 1024 * 1024 // max(layers - 1, 1)
    for index in range(1, layers):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            entry = tarfile.TarInfo(f"data/layer{index}.bin")
            entry.size = per_layer
            tar.addfile(entry, io.BytesIO(os.urandom(per_layer)))
        tars.append(buffer.getvalue())
    image = imagebuilder.build_image(tars, env=["PATH=/usr/bin:/bin"])
    imagebuilder.Pusher(registry.url).image("bench/scale", "latest", image)
    return image


def on_node(spec: devcluster.ClusterSpec, node: str, *argv: str) -> None:
    pid = (spec.directory / "run" / f"slurmd-{node}.pid").read_text().split()[0]
    subprocess.run(["nsenter", "-t", pid, "-m", *argv], check=False, capture_output=True)


def empty_caches(spec: devcluster.ClusterSpec, user: users.TestUser) -> None:
    shutil.rmtree(user.home / ".cache", ignore_errors=True)
    user.make_dir(".cache")
    shutil.rmtree(NODE_CACHE, ignore_errors=True)
    for node in spec.nodes:
        on_node(spec, node.name, "rm", "-rf", NODE_CACHE)


def one_run(spec: devcluster.ClusterSpec, user: users.TestUser, proxy: FaultProxy, image: imagebuilder.Image,
            layout: str) -> tuple[float, int, int]:
    """(seconds, blob downloads, layers) of one step on every node with empty caches."""
    empty_caches(spec, user)
    proxy.log.clear()
    env = {"SLURM_CONF": str(spec.slurm_conf), "ENROOT_ALLOW_HTTP": "y"}
    if layout == "node-local":
        env["ENROOT_CACHE_PATH"] = NODE_CACHE
    uri = f"{proxy.host}#bench/scale:latest"
    argv = ["srun", f"-N{len(spec.nodes)}", "--oversubscribe", f"--container-image={uri}", "true"]
    start = time.perf_counter()
    done = user.run(argv, env=env, timeout=1800)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{layout} on {len(spec.nodes)} nodes failed:\n{done.stderr}")
    downloads = sum(proxy.count("GET", f"/blobs/{layer.digest}") for layer in image.layers)
    return elapsed, downloads, len(image.layers)


def measure(workdir: Path, nodes: int, args, wrapper: Path, user: users.TestUser, registry: LocalRegistry,
            image: imagebuilder.Image) -> dict[str, list[tuple[float, int, int]]]:
    spec = devcluster.ClusterSpec(directory=workdir / f"cluster-{nodes}", node_count=nodes, cpus=8,
                                  plugin=build_plugin(workdir) if not (workdir / "spank-build").exists()
                                  else workdir / "spank-build" / "spank_pyenroot.so",
                                  plugin_args={"pyenroot": str(wrapper), "fanout": "auto"},
                                  controller_port=27817, first_node_port=27818, shared_tmp_paths=(workdir,))
    proxy = FaultProxy(registry.url).start()
    devcluster.up(spec)
    results: dict[str, list[tuple[float, int, int]]] = {"shared": [], "node-local": []}
    try:
        for _ in range(args.repeat):
            for layout in results:
                results[layout].append(one_run(spec, user, proxy, image, layout))
    finally:
        devcluster.down(spec)
        proxy.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, action="append", help="node counts (default 4 and 8)")
    parser.add_argument("--size", type=int, default=200, help="image size in MB (default 200)")
    parser.add_argument("--layers", type=int, default=10, help="layers (default 10)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each layout (default 2)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pyenroot-bench-scale-", dir="/tmp"))
    workdir.chmod(0o755)
    registry = LocalRegistry(workdir / "registry").start()
    try:
        wrapper = users.install_wrapper(workdir / "install")
        user = users.make_private_home(workdir, users.ensure_user(), wrapper, "home")
        image = push_image(workdir, registry, args.size, args.layers)
        print(f"image: {args.size} MB in {args.layers} layers; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")
        print(f"{'nodes':>5}  {'layout':<10}  {'median s':>8}  {'runs (s)':<24}  {'blob downloads':>14}  ratio")
        for nodes in args.nodes or [4, 8]:
            results = measure(workdir, nodes, args, wrapper, user, registry, image)
            shared = statistics.median(t for t, _, _ in results["shared"])
            for layout, runs in results.items():
                median = statistics.median(t for t, _, _ in runs)
                times = ", ".join(f"{t:.1f}" for t, _, _ in runs)
                downloads = "/".join(str(d) for _, d, _ in runs)
                print(f"{nodes:>5}  {layout:<10}  {median:>8.1f}  {times:<24}  "
                      f"{downloads + ' of ' + str(runs[0][2]):>14}  {median / shared:.2f}x", flush=True)
    finally:
        registry.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
