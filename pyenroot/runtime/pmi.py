"""What a Slurm step's PMI needs inside a container (the 50-slurm-pmi hook): pure, from the step's environment.

Slurm's mpi/pmix plugin runs a PMIx server in slurmstepd and tells each task where to find it (PMIX_SERVER_URI*,
PMIX_SERVER_TMPDIR, ...); the clients inside need those variables and the server's directories at the same
paths. mpi/pmi2 hands each task an inherited socket (PMI_FD) and PMI_RANK/PMI_SIZE/PMI_JOBID, which the task
keeps as it joins the container: the hook only has to leave them alone.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from pyenroot.record import record

# Per-task values: the task's own environment carries them (the plugin keeps the task's variables when it
# joins the container); one container serves every local task, so its environment must not hold one task's.
PER_TASK = frozenset({"PMIX_RANK", "PMI_FD", "PMI_RANK"})
# The PMIx server's choice of modules, for a client of another PMIx version in the image (as enroot does).
DERIVED_MCA = (("PMIX_PTL_MODULE", "PMIX_MCA_ptl"), ("PMIX_SECURITY_MODE", "PMIX_MCA_psec"),
               ("PMIX_GDS_MODULE", "PMIX_MCA_gds"))
# PMIX_SYSTEM_TMPDIR is not bound: it is the node's /tmp, and would replace the container's own.
DIRECTORY_VARIABLES = ("PMIX_SERVER_TMPDIR",)


@record(frozen=True)
class PmiSetup:
    environ: dict[str, str]  # variables to set in the container
    directories: tuple[str, ...]  # host directories to bind at the same path


def in_slurm_step(host_environ: Mapping[str, str]) -> bool:
    return bool(host_environ.get("SLURM_JOB_ID")) and bool(host_environ.get("SLURM_STEP_ID"))


def wants_pmix(host_environ: Mapping[str, str]) -> bool:
    mpi_type = host_environ.get("SLURM_MPI_TYPE", "")
    return mpi_type == "" or mpi_type.startswith("pmix")


def socket_directory(uri: str) -> str | None:
    """The directory of a PMIx server's Unix socket named by a PMIX_SERVER_URI* value, None for TCP.

    Forms: `NSPACE.RANK;usock://PATH` or `NSPACE.RANK;tcp4://HOST:PORT` (PMIx 2 and later), `PID:PATH` (PMIx 1).
    """
    address = uri.rpartition(";")[2]
    if "://" in address:
        scheme, _, rest = address.partition("://")
        path = rest if scheme in ("usock", "file") else ""
    else:
        index = address.find(":/")
        path = address[index + 1:] if index >= 0 else ""
    return _usable_directory(posixpath.dirname(path)) if path.startswith("/") else None


def _usable_directory(path: str) -> str | None:
    """An absolute, normalised directory other than the root; None for anything else."""
    if not path.startswith("/"):
        return None
    normal = posixpath.normpath(path)
    return None if normal in ("/", "//") else normal


def app_directory(host_environ: Mapping[str, str], uid: int, tmpfs: str = "/tmp") -> str | None:
    """Slurm's per-step client directory (`spmix_appdir_UID_JOB.STEP` in TmpFS or SLURM_PMIX_TMPDIR), which
    the PMIx server gives the clients as their session directory."""
    job, step = host_environ.get("SLURM_JOB_ID"), host_environ.get("SLURM_STEP_ID")
    if not job or not step:
        return None
    base = host_environ.get("SLURM_PMIX_TMPDIR") or tmpfs
    return _usable_directory(posixpath.join(base, f"spmix_appdir_{uid}_{job}.{step}"))


def pmi_setup(host_environ: Mapping[str, str], app_dir: str | None = None) -> PmiSetup | None:
    """What the container needs for the step's PMI; None outside a Slurm step or without PMI variables."""
    if not in_slurm_step(host_environ):
        return None
    pmix = wants_pmix(host_environ)
    environ = {name: value for name, value in host_environ.items()
               if name not in PER_TASK and (name.startswith("PMI_") or (pmix and name.startswith("PMIX_")))}
    if not environ:
        return None
    if pmix:
        for source, target in DERIVED_MCA:
            if host_environ.get(source) and target not in environ:
                environ[target] = host_environ[source]
    directories: list[str] = []
    candidates = [environ.get(name, "") for name in DIRECTORY_VARIABLES]
    candidates += [socket_directory(value) or "" for name, value in sorted(environ.items())
                   if name.startswith("PMIX_SERVER_URI")]
    candidates.append(app_dir or "")
    for candidate in candidates:
        directory = _usable_directory(candidate)
        if directory and directory not in directories:
            directories.append(directory)
    return PmiSetup(environ, tuple(directories))
