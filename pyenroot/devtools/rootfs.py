"""Root filesystems for test images: busybox-static (fast) and Debian bookworm minbase (realistic)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
CACHE = Path(os.environ.get("PYENROOT_TEST_CACHE", "/var/cache/pyenroot-tests"))
OS_RELEASE_BUSYBOX = 'NAME="pyenroot busybox"\nID=pyenroot-busybox\nPRETTY_NAME="pyenroot test busybox"\n'


def busybox_rootfs(target: Path) -> Path:
    """A minimal root filesystem: static busybox with every applet linked, /etc basics."""
    if target.exists():
        shutil.rmtree(target)
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "home",
                "var/tmp", "run"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    (target / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, target / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        link = target / applet
        if applet == "bin/busybox" or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(target / "bin/busybox", link.parent))
    (target / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (target / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (target / "etc/os-release").write_text(OS_RELEASE_BUSYBOX)
    return target


def debian_rootfs_tar(suite: str = "bookworm", packages: tuple[str, ...] = (), flavour: str = "minbase") -> Path:
    """A Debian minbase root filesystem (plus `packages`, e.g. an MPI) as a tar, built once with mmdebstrap and
    cached between runs as debian-SUITE-FLAVOUR[-DIGEST of the package list].tar."""
    CACHE.mkdir(parents=True, exist_ok=True)
    digest = f"-{hashlib.sha256(' '.join(packages).encode()).hexdigest()[:8]}" if packages else ""
    tar = CACHE / f"debian-{suite}-{flavour}{digest}.tar"
    if tar.exists():
        return tar
    with tempfile.NamedTemporaryFile(dir=CACHE, suffix=".tar", delete=False) as tmp:
        partial = Path(tmp.name)
    include = ",".join(("ca-certificates", *packages))
    try:
        subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={include}", suite, str(partial)],
                       check=True, capture_output=True, timeout=900)
        partial.rename(tar)
    finally:
        partial.unlink(missing_ok=True)
    return tar


# The MPI test images: Open MPI (PMIx) with mpi4py, and MPICH (PMI2) with Python, whose tests call libmpich
# through ctypes (Debian builds its one mpi4py against Open MPI).
MPI_FLAVOURS: dict[str, tuple[str, ...]] = {
    "openmpi": ("openmpi-bin", "python3-mpi4py"),
    "mpich": ("libmpich12", "python3"),
}


def mpi_rootfs_tar(flavour: str) -> Path:
    return debian_rootfs_tar(packages=MPI_FLAVOURS[flavour], flavour=flavour)
