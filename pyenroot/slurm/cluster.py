"""Cluster state (nodes, jobs) through one small interface.

The default reads `sinfo --json` / `squeue --json` (Slurm 22.05 has both); pyslurm is used only when a build
matching the installed Slurm is importable. Parsing is pure and unit-tested on recorded JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pyenroot import tools
from pyenroot.errors import PyenrootError


class SlurmQueryError(PyenrootError):
    reference = "slurm"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    state: str  # lower case base state plus flags, e.g. "idle", "allocated", "drained", "down"


@dataclass(frozen=True)
class JobInfo:
    job_id: int
    user: str
    state: str  # lower case, e.g. "running", "pending", "completed"
    nodes: str
    name: str


class StateBackend(Protocol):
    def nodes(self) -> list[NodeInfo]: ...

    def jobs(self) -> list[JobInfo]: ...


def _node_state(raw: Mapping[str, Any]) -> str:
    """22.05 reports `state` ("idle") plus `state_flags` (["DRAIN"]); sinfo's %t shows drain as "drained"."""
    base = str(raw.get("state", "unknown")).lower()
    flags = {str(f).upper() for f in raw.get("state_flags", []) or []}
    if "DRAIN" in flags:
        return "drained" if base in ("idle", "down") else "draining"
    return base


def parse_sinfo(text: str) -> list[NodeInfo]:
    data = json.loads(text)
    return [NodeInfo(str(n.get("name", "")), _node_state(n)) for n in data.get("nodes", [])]


def parse_squeue(text: str) -> list[JobInfo]:
    data = json.loads(text)
    jobs = []
    for job in data.get("jobs", []):
        jobs.append(JobInfo(int(job.get("job_id", 0)), str(job.get("user_name", "")),
                            str(job.get("job_state", "")).lower(), str(job.get("nodes", "")),
                            str(job.get("name", ""))))
    return jobs


class JsonBackend:
    """`sinfo --json` / `squeue --json` through the process runner."""

    def __init__(self, slurm_conf: Path | None = None):
        self.env = dict(os.environ)
        if slurm_conf is not None:
            self.env["SLURM_CONF"] = str(slurm_conf)

    def _query(self, argv: list[str]) -> str:
        try:
            done = tools.run(argv, env=self.env, timeout=60)
        except OSError as exc:  # TimeoutError too
            raise SlurmQueryError(f"{argv[0]}: {exc}") from exc
        if done.returncode != 0:
            raise SlurmQueryError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def nodes(self) -> list[NodeInfo]:
        return parse_sinfo(self._query(["sinfo", "--json"]))

    def jobs(self) -> list[JobInfo]:
        return parse_squeue(self._query(["squeue", "--json"]))


class PyslurmBackend:
    """The same answers from pyslurm (only built when a matching pyslurm imports)."""

    def __init__(self, pyslurm_module: Any):
        self.pyslurm = pyslurm_module

    def nodes(self) -> list[NodeInfo]:
        nodes = self.pyslurm.node().get()
        return [NodeInfo(name, str(info.get("state", "unknown")).lower().replace("+", "")) for name, info in
                nodes.items()]

    def jobs(self) -> list[JobInfo]:
        jobs = self.pyslurm.job().get()
        return [JobInfo(int(job_id), str(info.get("user_id", "")), str(info.get("job_state", "")).lower(),
                        str(info.get("nodes") or ""), str(info.get("name", ""))) for job_id, info in jobs.items()]


def _pyslurm_backend(slurm_conf: Path | None) -> StateBackend | None:
    if slurm_conf is not None and os.environ.get("SLURM_CONF") != str(slurm_conf):
        return None  # pyslurm reads SLURM_CONF once per process: only usable for the process's own cluster
    try:
        import pyslurm  # type: ignore[import-not-found]
    except Exception:  # not installed, or built against another Slurm (it raises at import)
        return None
    return PyslurmBackend(pyslurm)


class ClusterState:
    """Nodes and jobs of one cluster (by its slurm.conf)."""

    def __init__(self, slurm_conf: Path | None = None, backend: StateBackend | None = None):
        self.backend = backend or _pyslurm_backend(slurm_conf) or JsonBackend(slurm_conf)

    def nodes(self) -> list[NodeInfo]:
        return self.backend.nodes()

    def jobs(self, user: str | None = None) -> list[JobInfo]:
        return [j for j in self.backend.jobs() if user is None or j.user == user]

    def idle(self, names: Iterable[str] | None = None) -> bool:
        wanted = set(names) if names is not None else None
        nodes = [n for n in self.nodes() if wanted is None or n.name in wanted]
        return bool(nodes) and all(n.state == "idle" for n in nodes)
