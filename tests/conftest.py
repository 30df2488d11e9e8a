"""Fixtures shared by the whole test run: a loopback registry, test images, an unprivileged user.

Markers: tests under tests/unit are `unit`, tests/integration `integration`, tests/slurm `slurm`,
tests/packages `packages` (applied automatically from the directory).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyenroot.devtools import imagebuilder, rootfs
from pyenroot.devtools.registry import LocalRegistry
from tests.helpers import users

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        level = Path(str(item.fspath)).relative_to(HERE).parts[0]
        if level in ("unit", "integration", "slurm", "packages"):
            item.add_marker(getattr(pytest.mark, level))


@pytest.fixture(scope="session")
def session_dir():
    """A world-traversable scratch directory for the whole run (the test user must reach into it)."""
    path = Path(tempfile.mkdtemp(prefix="pyenroot-tests-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def host_setup():
    """Host facts the integration tests rely on: /dev/fuse usable by users (as distributions ship it)."""
    if os.geteuid() != 0:
        pytest.skip("integration tests create an unprivileged user and must start as root")
    fuse = Path("/dev/fuse")
    if fuse.exists() and stat.S_IMODE(fuse.stat().st_mode) != 0o666:
        fuse.chmod(0o666)


@pytest.fixture(scope="session")
def account(host_setup):
    return users.ensure_user()


@pytest.fixture(scope="session")
def other_account(host_setup):
    return users.ensure_user(users.OTHER_USER_NAME)


@pytest.fixture
def other_user(other_account, pyenroot_wrapper, session_dir, request) -> users.TestUser:
    """A second unprivileged local user (another person on the node), for cross-user tests."""
    yield from _test_home(other_account, pyenroot_wrapper, session_dir, request, "other-")


@pytest.fixture(scope="session")
def pyenroot_wrapper(session_dir):
    """An executable `pyenroot` that runs the source under test, usable by any user (and by slurmstepd)."""
    return users.install_wrapper(session_dir / "install")


def _test_home(account, wrapper, session_dir, request, prefix: str = ""):
    label = f"homes/{prefix}" + request.node.name.replace("/", "_").replace("[", "_").replace("]", "")[:80]
    (session_dir / "homes").mkdir(exist_ok=True, mode=0o755)
    test_user = users.make_private_home(session_dir, account, wrapper, label)
    yield test_user
    shutil.rmtree(test_user.home, ignore_errors=True)


@pytest.fixture
def user(account, pyenroot_wrapper, session_dir, request) -> users.TestUser:
    """The unprivileged user with a fresh private HOME and XDG directories for this test."""
    yield from _test_home(account, pyenroot_wrapper, session_dir, request)


@pytest.fixture(scope="session")
def registry(session_dir, host_setup):
    """A plain-HTTP docker-registry on 127.0.0.1 (use ENROOT_ALLOW_HTTP=y against it)."""
    reg = LocalRegistry(session_dir / "registry").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def pusher(registry):
    return imagebuilder.Pusher(registry.url)


@dataclass
class PushedImage:
    registry: LocalRegistry
    repository: str
    tag: str
    image: imagebuilder.Image

    @property
    def uri(self) -> str:
        """enroot-style URI: docker://HOST:PORT#repository:tag."""
        return f"docker://{self.registry.host}#{self.repository}:{self.tag}"

    @property
    def srun_image(self) -> str:
        """The reference as `srun --container-image` takes it (pyxis's form): HOST:PORT#repository:tag."""
        return self.uri.removeprefix("docker://")


@pytest.fixture(scope="session")
def busybox_rootfs_dir(session_dir):
    path = rootfs.busybox_rootfs(session_dir / "rootfs-busybox")
    for p in [path, *path.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
    return path


@pytest.fixture(scope="session")
def busybox_image(registry, pusher, busybox_rootfs_dir) -> PushedImage:
    """A busybox-static image in the local registry as test/busybox:latest (two layers)."""
    base = imagebuilder.tar_of_directory(busybox_rootfs_dir)
    extra = imagebuilder.tar_bytes([
        imagebuilder.Entry("etc", "dir"),
        imagebuilder.Entry("etc/pyenroot-test", data=b"second layer\n"),
    ])
    image = imagebuilder.build_image([base, extra], env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "IMAGE_VAR=busybox"])
    pusher.image("test/busybox", "latest", image)
    return PushedImage(registry, "test/busybox", "latest", image)


@pytest.fixture(scope="session")
def busybox_sqsh(session_dir, busybox_rootfs_dir) -> Path:
    """A squashfs image of the busybox root filesystem, readable by everyone."""
    out = session_dir / "images" / "busybox.sqsh"
    out.parent.mkdir(exist_ok=True, mode=0o755)
    if not out.exists():
        subprocess.run(["mksquashfs", str(busybox_rootfs_dir), str(out), "-all-root", "-comp", "lz4",
                        "-no-progress", "-quiet"], check=True, capture_output=True)
    out.chmod(0o644)
    return out


@pytest.fixture(scope="session")
def debian_rootfs_tar() -> Path:
    """Debian bookworm minbase as a tar (built with mmdebstrap on the first run, then cached)."""
    try:
        return rootfs.debian_rootfs_tar()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"mmdebstrap failed: {exc.stderr[-2000:]!r}")


@pytest.fixture(scope="session")
def debian_image(registry, pusher, debian_rootfs_tar) -> PushedImage:
    """Debian bookworm minbase in the local registry as test/debian:bookworm (one layer)."""
    image = imagebuilder.build_image([debian_rootfs_tar.read_bytes()], cmd=["/bin/bash"])
    pusher.image("test/debian", "bookworm", image)
    return PushedImage(registry, "test/debian", "bookworm", image)


def _mpi_image(flavour: str, registry, pusher) -> PushedImage:
    try:
        tar = rootfs.mpi_rootfs_tar(flavour)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"mmdebstrap failed: {exc.stderr[-2000:]!r}")
    image = imagebuilder.build_image([tar.read_bytes()], cmd=["/bin/bash"])
    pusher.image(f"test/{flavour}", "bookworm", image)
    return PushedImage(registry, f"test/{flavour}", "bookworm", image)


@pytest.fixture(scope="session")
def openmpi_image(registry, pusher) -> PushedImage:
    """Debian bookworm with Open MPI and mpi4py (test/openmpi:bookworm; built once, cached like debian_image)."""
    return _mpi_image("openmpi", registry, pusher)


@pytest.fixture(scope="session")
def mpich_image(registry, pusher) -> PushedImage:
    """Debian bookworm with MPICH and mpi4py (test/mpich:bookworm)."""
    return _mpi_image("mpich", registry, pusher)
