"""A real two-node Slurm cluster with the pyenroot SPANK plugin, for the whole tests/slurm session.

The plugin is built from spank_plugin/ into the session directory (readable by the test user, whose srun
loads it too) and configured with `pyenroot=<the test wrapper>`, so the steps run the source under test.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyenroot.devtools import devcluster
from tests.helpers import users

REPO = Path(__file__).resolve().parents[2]


def _free_port_block(count: int) -> int:
    """The first of `count` consecutive free TCP ports on loopback (best effort)."""
    for start in range(21000, 40000, 50):
        try:
            for port in range(start, start + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return start
    raise RuntimeError("no free port block")


@pytest.fixture(scope="session")
def spank_plugin(session_dir) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    build = session_dir / "spank-build"
    shutil.copytree(REPO / "spank_plugin", build, ignore=shutil.ignore_patterns("*.so"), dirs_exist_ok=True)
    done = subprocess.run(["make", "-C", str(build)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"building the SPANK plugin failed:\n{done.stdout}\n{done.stderr}")
    plugin = build / "spank_pyenroot.so"
    plugin.chmod(0o755)
    build.chmod(0o755)
    return plugin


def shared_tmp(session_dir: Path, tmp_path_factory) -> tuple[Path, ...]:
    """What the nodes keep of the host's /tmp (each has its own): the session's files and pytest's tmp_path."""
    return (session_dir, tmp_path_factory.getbasetemp())


@contextlib.contextmanager
def running_cluster(directory: Path, plugin: Path, plugin_args: dict[str, str],
                    shared_tmp_paths: tuple[Path, ...], node_count: int = 2) -> Iterator[devcluster.ClusterSpec]:
    """A cluster (two nodes unless asked) on free ports whose plugstack loads `plugin` with `plugin_args`; down
    afterwards. Each node has its own /tmp, except for `shared_tmp_paths` (the session's files, pytest's tmp_path)."""
    if not shutil.which("slurmd") or not shutil.which("munged"):
        pytest.skip("slurmd/munge are not installed")
    base = _free_port_block(node_count + 2)
    spec = devcluster.ClusterSpec(directory=directory, node_count=node_count, cpus=8, plugin=plugin,
                                  plugin_args=plugin_args,
                                  controller_port=base, first_node_port=base + 1, shared_tmp_paths=shared_tmp_paths)
    devcluster.up(spec)
    try:
        yield spec
    finally:
        devcluster.down(spec)


@pytest.fixture(scope="session")
def slurm_cluster(session_dir, host_setup, pyenroot_wrapper, spank_plugin, account, tmp_path_factory):
    with running_cluster(session_dir / "cluster", spank_plugin, {"pyenroot": str(pyenroot_wrapper)},
                         shared_tmp(session_dir, tmp_path_factory)) as spec:
        yield spec


@pytest.fixture(scope="session")
def job_scope_cluster(session_dir, host_setup, pyenroot_wrapper, spank_plugin, account, tmp_path_factory):
    """A second cluster whose plugin has container_scope=job (slurmd reads plugstack.conf only at start)."""
    arguments = {"pyenroot": str(pyenroot_wrapper), "container_scope": "job"}
    with running_cluster(session_dir / "cluster-job-scope", spank_plugin, arguments,
                         shared_tmp(session_dir, tmp_path_factory)) as spec:
        yield spec


@dataclass
class Slurm:
    """srun/sbatch as the unprivileged test user against the session's cluster."""

    spec: devcluster.ClusterSpec
    user: users.TestUser

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"SLURM_CONF": str(self.spec.slurm_conf), "ENROOT_ALLOW_HTTP": "y", **(extra or {})}

    def srun(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
             input: str | None = None) -> subprocess.CompletedProcess:
        return self.user.run(["srun", "-N1", "--oversubscribe", *args], env=self.env(env), timeout=timeout,
                             input=input)

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        full_env = self.user.env(**self.env(env))
        return subprocess.Popen(["srun", "-N1", "--oversubscribe", *args], env=full_env, cwd=str(self.user.home),
                                user=self.user.uid, group=self.user.gid, extra_groups=[], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sbatch(self, script: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 300) -> tuple[subprocess.CompletedProcess, str]:
        """`sbatch --wait` of `script`; returns the result and the job's output."""
        log = self.user.home / "sbatch.log"
        done = self.user.run(["sbatch", "--wait", "-o", str(log), *args], env=self.env(env), input=script,
                             timeout=timeout)
        return done, log.read_text() if log.exists() else ""

    def pyenroot(self, *args: str) -> subprocess.CompletedProcess:
        return self.user.pyenroot(*args, env=self.env())


@pytest.fixture
def slurm(slurm_cluster, user) -> Slurm:
    user.make_dir("work")
    return Slurm(slurm_cluster, user)


@pytest.fixture
def plugin_args(slurm_cluster):
    """Change the plugin's plugstack arguments for one test (srun and slurmstepd read them at every step)."""
    conf = slurm_cluster.directory / "etc" / "plugstack.conf.d" / "pyenroot.conf"
    original = conf.read_text()

    def change(**extra: str) -> None:
        spec = devcluster.ClusterSpec(**{**slurm_cluster.__dict__,
                                         "plugin_args": {**slurm_cluster.plugin_args, **extra}})
        conf.write_text(devcluster.render(spec)["plugstack.conf.d/pyenroot.conf"])

    yield change
    conf.write_text(original)


@pytest.fixture(scope="session")
def busybox_uri(busybox_image) -> str:
    """The busybox test image as srun takes it: HOST:PORT#repository:tag."""
    return busybox_image.srun_image


@pytest.fixture(scope="session")
def debian_uri(debian_image) -> str:
    return debian_image.srun_image
