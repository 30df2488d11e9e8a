#!/usr/bin/env python3
"""Benchmark MPI in containers against the same program on the host, on the local two-node cluster.

In one run (as root; steps run as the unprivileged test account), interleaved, --repeat times each (default 5),
the medians of, with `srun --mpi=pmi2`, MPICH (the host's Debian libmpich12 and the same build in the suite's
MPICH image), through ctypes:

- ping-pong between two ranks on different nodes: latency (8 bytes) and bandwidth (1 MiB);
- an allreduce of one integer over 4 ranks (2 per node);
- the wall time of an 8-rank step that only calls MPI_Init and a barrier (start-up);

each on the host and in the container (an unnamed container from the cached image). Targets: latency within
5 % of the host's, start-up of the 8-rank step at most 0.3 s over the host's. Both "nodes" are on one machine,
so the transport is TCP over loopback (UCX_TLS=tcp,self): the figures measure the container's overhead, not a
network.

    python bench/mpi.py              # 5 runs each
    python bench/mpi.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.slurm import bench_cluster, timed  # noqa: E402
from pyenroot.devtools import imagebuilder, rootfs  # noqa: E402
from pyenroot.devtools.registry import LocalRegistry  # noqa: E402
from tests.helpers import users  # noqa: E402

# Rank 0 prints one JSON line: microseconds per round trip / per allreduce, MB/s for 1 MiB messages.
PROGRAM = """
import ctypes, json, os, sys, time
mpi = ctypes.CDLL("libmpich.so.12")
WORLD, INT, BYTE, SUM, IGNORE = 0x44000000, 0x4c000405, 0x4c00010d, 0x58000003, ctypes.c_void_p(1)
mode = sys.argv[1]
mpi.MPI_Init(None, None)
rank, size = ctypes.c_int(), ctypes.c_int()
mpi.MPI_Comm_rank(WORLD, ctypes.byref(rank))
mpi.MPI_Comm_size(WORLD, ctypes.byref(size))
r, n = rank.value, size.value
result = {}
if mode == "pingpong":
    peer = n - 1 - r
    for label, length, count in (("latency_us", 8, 2000), ("bandwidth_MBps", 1 << 20, 100)):
        buf = ctypes.create_string_buffer(length)
        for warm in (True, False):
            t0 = time.perf_counter()
            for _ in range(count // (10 if warm else 1)):
                if r == 0:
                    mpi.MPI_Send(buf, length, BYTE, peer, 0, WORLD)
                    mpi.MPI_Recv(buf, length, BYTE, peer, 0, WORLD, IGNORE)
                elif r == n - 1:
                    mpi.MPI_Recv(buf, length, BYTE, peer, 0, WORLD, IGNORE)
                    mpi.MPI_Send(buf, length, BYTE, peer, 0, WORLD)
            elapsed = time.perf_counter() - t0
        per_trip = elapsed / count
        result[label] = per_trip / 2 * 1e6 if length == 8 else 2 * length / per_trip / 1e6
elif mode == "allreduce":
    mine, total = ctypes.c_int(r), ctypes.c_int()
    for _ in range(100):
        mpi.MPI_Allreduce(ctypes.byref(mine), ctypes.byref(total), 1, INT, SUM, WORLD)
    t0 = time.perf_counter()
    for _ in range(2000):
        mpi.MPI_Allreduce(ctypes.byref(mine), ctypes.byref(total), 1, INT, SUM, WORLD)
    result["allreduce_us"] = (time.perf_counter() - t0) / 2000 * 1e6
if r == 0 and result:
    print(json.dumps(result), flush=True)
mpi.MPI_Barrier(WORLD)
os._exit(0)  # not MPI_Finalize: UCX's TCP transport can hang closing loopback connections (tests/slurm/test_mpi.py)
"""
TRANSPORT = {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": "lo"}


def push_mpich(registry: LocalRegistry) -> str:
    image = imagebuilder.build_image([rootfs.mpi_rootfs_tar("mpich").read_bytes()], cmd=["/bin/bash"])
    imagebuilder.Pusher(registry.url).image("bench/mpich", "bookworm", image)
    return f"{registry.host}#bench/mpich:bookworm"


def measured(user: users.TestUser, argv: list[str], env: dict[str, str]) -> dict[str, float]:
    done = user.run(argv, env=env, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case (default 5)")
    args = parser.parse_args()
    with bench_cluster("pyenroot-bench-mpi-", 26917) as (_, registry, user, spec):
        image = push_mpich(registry)
        env = {"SLURM_CONF": str(spec.slurm_conf), "ENROOT_ALLOW_HTTP": "y", **TRANSPORT}
        where = {"host": [], "container": [f"--container-image={image}"]}
        srun = ["srun", "-N2", "--mpi=pmi2"]
        timed(user, [*srun, "-n2", *where["container"], "true"], env)  # import the image once
        figures: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for label, extra in where.items():
                for mode, tasks in (("pingpong", 2), ("allreduce", 4)):
                    argv = [*srun, f"-n{tasks}", "--ntasks-per-node", str(tasks // 2), *extra, "python3", "-c",
                            PROGRAM, mode]
                    for key, value in measured(user, argv, env).items():
                        figures.setdefault(f"{key} ({label})", []).append(value)
                startup = [*srun, "-n8", *extra, "python3", "-c", PROGRAM, "init"]
                figures.setdefault(f"startup_8_ranks_s ({label})", []).append(timed(user, startup, env))
        report(figures)
    return 0


def report(figures: dict[str, list[float]]) -> None:
    print(f"{'figure':40} {'median':>10} {'min':>10} {'max':>10}")
    for name, values in figures.items():
        print(f"{name:40} {statistics.median(values):10.3f} {min(values):10.3f} {max(values):10.3f}")
    for key in sorted({name.split(" (")[0] for name in figures}):
        host, container = (statistics.median(figures[f"{key} ({w})"]) for w in ("host", "container"))
        print(f"{key}: container {container:.3f} vs host {host:.3f} ({(container / host - 1) * 100:+.1f} %, "
              f"{container - host:+.3f})")


if __name__ == "__main__":
    sys.exit(main())
