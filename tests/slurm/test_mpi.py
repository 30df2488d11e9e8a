"""MPI jobs in containers: `srun --mpi=pmix|pmi2 --container-image=...` across the two nodes (docs/mpi.md).

Open MPI (PMIx) and MPICH (PMI2) images with mpi4py, built from Debian in the suite. Both nodes are on one
host: MPI's own transports go over loopback (MCA settings below), and each node has its own /tmp.
"""

from __future__ import annotations

import pytest

# Each rank: the allreduce of all ranks, and a message from its peer on the other node (ranks 0,1 on node1).
PROGRAM = """
import os
from mpi4py import MPI
world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
node = os.environ["SLURMD_NODENAME"]
total = world.allreduce(rank)
peer = size - 1 - rank
if rank < size // 2:
    world.send((rank, node), dest=peer)
    got = world.recv(source=peer)
else:
    got = world.recv(source=peer)
    world.send((rank, node), dest=peer)
print(rank, size, total, node, got[0], got[1], flush=True)
"""

# The same with MPICH through ctypes (Debian's mpi4py is built against Open MPI). MPICH's ABI fixes the handles.
MPICH_PROGRAM = """
import ctypes, os
mpi = ctypes.CDLL("libmpich.so.12")
WORLD, INT, SUM = 0x44000000, 0x4c000405, 0x58000003
mpi.MPI_Init(None, None)
rank, size = ctypes.c_int(), ctypes.c_int()
mpi.MPI_Comm_rank(WORLD, ctypes.byref(rank))
mpi.MPI_Comm_size(WORLD, ctypes.byref(size))
r, n = rank.value, size.value
mine, total = ctypes.c_int(r), ctypes.c_int()
mpi.MPI_Allreduce(ctypes.byref(mine), ctypes.byref(total), 1, INT, SUM, WORLD)
node = os.environ["SLURMD_NODENAME"]
out = (ctypes.c_int * 2)(r, int(os.environ["SLURM_NODEID"]))
got = (ctypes.c_int * 2)()
peer = n - 1 - r
if r < n // 2:
    mpi.MPI_Send(out, 2, INT, peer, 0, WORLD)
    mpi.MPI_Recv(got, 2, INT, peer, 0, WORLD, ctypes.c_void_p(1))
else:
    mpi.MPI_Recv(got, 2, INT, peer, 0, WORLD, ctypes.c_void_p(1))
    mpi.MPI_Send(out, 2, INT, peer, 0, WORLD)
print(r, n, total.value, node, got[0], f"node{got[1] + 1}", flush=True)
# Not MPI_Finalize: UCX's TCP transport can hang closing its connections over loopback (seen once in a few
# runs); the barrier is the last collective, and the job needs nothing more from MPI.
mpi.MPI_Barrier(WORLD)
os._exit(0)
"""

# Two "nodes" on one host: Open MPI's TCP transport must use loopback, which it skips by default; no UCX.
OPENMPI_ENV = {"OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "self,vader,tcp", "OMPI_MCA_btl_tcp_if_include": "lo",
               "OMPI_MCA_oob_tcp_if_include": "lo", "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
               "OMPI_MCA_rmaps_base_oversubscribe": "1"}
MPICH_ENV = {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": "lo"}  # Debian builds MPICH on UCX


@pytest.fixture(scope="module")
def openmpi_uri(openmpi_image) -> str:
    return openmpi_image.srun_image


@pytest.fixture(scope="module")
def mpich_uri(mpich_image) -> str:
    return mpich_image.srun_image


def _mpi_srun(slurm, mpi: str, env: dict[str, str], *args: str, ntasks: int = 4):
    return slurm.user.run(["srun", "-N2", f"-n{ntasks}", "--ntasks-per-node", str(ntasks // 2), f"--mpi={mpi}",
                           *args], env=slurm.env(env), timeout=300)


def _check_ranks(done, size: int = 4) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = sorted(line.split() for line in done.stdout.splitlines() if line.strip())
    assert len(rows) == size, done.stdout
    expected_total = sum(range(size))
    for rank, (r, n, total, node, peer, peer_node) in enumerate(rows):
        assert (int(r), int(n), int(total)) == (rank, size, expected_total)
        assert node == ("node1" if rank < size // 2 else "node2")
        assert int(peer) == size - 1 - rank and peer_node != node  # point to point across the nodes


def test_openmpi_pmix_across_nodes(slurm, openmpi_uri):
    done = _mpi_srun(slurm, "pmix", OPENMPI_ENV, f"--container-image={openmpi_uri}", "python3", "-c", PROGRAM)
    _check_ranks(done)


def test_pmix_variables_and_server_directory_inside(slurm, busybox_uri):
    """What a PMIx client needs: the variables, and the server's directory at the same path (read-only image)."""
    script = ('echo "$PMIX_RANK $PMIX_NAMESPACE"; test -n "$PMIX_SERVER_URI41" && echo uri; '
              'test -d "$PMIX_SERVER_TMPDIR" && ls "$PMIX_SERVER_TMPDIR" >/dev/null && echo server-dir')
    done = _mpi_srun(slurm, "pmix", {}, f"--container-image={busybox_uri}", "sh", "-c", script, ntasks=2)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    ranks = sorted(line.split()[0] for line in lines if line.split()[0].isdigit())
    assert ranks == ["0", "1"], done.stdout
    assert lines.count("uri") == 2 and lines.count("server-dir") == 2, done.stdout + done.stderr


def test_pmi2_fd_and_variables_pass_through(slurm, busybox_uri):
    script = 'echo "$PMI_RANK $PMI_SIZE $PMI_JOBID"; [ -e "/proc/self/fd/$PMI_FD" ] && echo fd'
    done = _mpi_srun(slurm, "pmi2", {}, f"--container-image={busybox_uri}", "sh", "-c", script, ntasks=2)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sorted(line.split()[0] for line in lines if line != "fd") == ["0", "1"], done.stdout
    assert all(line.split()[1] == "2" for line in lines if line != "fd")
    assert lines.count("fd") == 2, done.stdout


def test_mpich_pmi2_across_nodes(slurm, mpich_uri):
    done = _mpi_srun(slurm, "pmi2", MPICH_ENV, f"--container-image={mpich_uri}", "python3", "-c", MPICH_PROGRAM)
    _check_ranks(done)


def test_openmpi_named_container(slurm, openmpi_uri):
    """A named container: created by the first step, reused by the second."""
    for _ in range(2):
        done = _mpi_srun(slurm, "pmix", OPENMPI_ENV, f"--container-image={openmpi_uri}", "--container-name=ompi",
                         "python3", "-c", PROGRAM)
        _check_ranks(done)


def test_mpich_pmi2_remap_root(slurm, mpich_uri):
    """As remapped root. (PMIx refuses such a client: it reports uid 0, not the job's; see docs/mpi.md.)"""
    done = _mpi_srun(slurm, "pmi2", MPICH_ENV, f"--container-image={mpich_uri}", "--container-remap-root",
                     "python3", "-c", MPICH_PROGRAM)
    _check_ranks(done)


def test_openmpi_squashfs_direct_start(slurm, openmpi_image):
    work = slurm.user.make_dir("work")
    imported = slurm.pyenroot("import", "-o", str(work / "openmpi.sqsh"), openmpi_image.uri)
    assert imported.returncode == 0, imported.stderr
    done = _mpi_srun(slurm, "pmix", OPENMPI_ENV, f"--container-image={work / 'openmpi.sqsh'}", "python3", "-c",
                     PROGRAM)
    _check_ranks(done)


def test_sbatch_script_calls_srun_mpi(slurm, openmpi_uri):
    exports = "".join(f"export {name}={value}\n" for name, value in OPENMPI_ENV.items())
    script = (f"#!/bin/sh\n{exports}"
              f"srun --mpi=pmix --container-image='{openmpi_uri}' python3 -c '{PROGRAM}'\n")
    done, log = slurm.sbatch(script, "-N2", "-n4", "--ntasks-per-node=2")
    assert done.returncode == 0, done.stderr + log
    rows = sorted(line.split() for line in log.splitlines() if line[:1].isdigit())
    assert [row[:3] for row in rows] == [[str(r), "4", "6"] for r in range(4)], log
