"""The built Debian packages, installed into this machine's system (apt-get install ./….deb).

Skipped unless PYENROOT_TEST_DEBS names the directory `make deb` wrote (`make test-packages` sets it).
The packaged pyenroot runs with the system python3 from /usr/bin; the development venv stays as it is.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.slurm.conftest import Slurm, running_cluster, shared_tmp

PACKAGES = ("pyenroot", "pyenroot-slurm-plugin")
PACKAGED_CLI = Path("/usr/bin/pyenroot")


def _multiarch() -> str:
    return subprocess.run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="session")
def debs() -> list[Path]:
    directory = os.environ.get("PYENROOT_TEST_DEBS")
    if not directory:
        pytest.skip("PYENROOT_TEST_DEBS is not set (make test-packages builds and tests the packages)")
    found = [next(iter(sorted(Path(directory).glob(f"{name}_*.deb"))), None) for name in PACKAGES]
    missing = [name for name, deb in zip(PACKAGES, found, strict=True) if deb is None]
    if missing:
        pytest.fail(f"no .deb for {', '.join(missing)} in {directory}")
    return [deb for deb in found if deb is not None]


@pytest.fixture(scope="session")
def installed(debs, host_setup) -> list[Path]:
    """The packages, installed with apt-get as an admin would (their dependencies come along)."""
    done = subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "--no-install-recommends",
         "--reinstall", *(str(deb.resolve()) for deb in debs)],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"apt-get install of the packages failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return debs


@pytest.fixture(scope="session")
def packaged_plugin(installed) -> Path:
    return Path(f"/usr/lib/{_multiarch()}/slurm-wlm/spank_pyenroot.so")


@pytest.fixture(scope="session")
def packaged_cluster(session_dir, host_setup, packaged_plugin, account, tmp_path_factory):
    """A two-node local cluster whose plugstack loads the packaged plugin, which runs the packaged CLI."""
    with running_cluster(session_dir / "cluster-packaged", packaged_plugin, {"pyenroot": str(PACKAGED_CLI)},
                         shared_tmp(session_dir, tmp_path_factory)) as spec:
        yield spec


@pytest.fixture
def packaged_slurm(packaged_cluster, user) -> Slurm:
    return Slurm(packaged_cluster, user)
