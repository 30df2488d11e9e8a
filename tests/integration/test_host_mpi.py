"""The host MPI hook (60-mpi) with a fake site config: the host's MPICH replaces a container's different one.

The image is the suite's MPICH image with its libmpich.so.12 replaced by a stub that says so; the site file
names the host's real MPICH. With PYENROOT_MPI=host the program in the container reports the host's version.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pyenroot.devtools import imagebuilder, rootfs
from tests.integration.imagecheck import HTTP

HOST_MPICH = Path("/usr/lib/x86_64-linux-gnu/libmpich.so.12")
IMAGE_MPICH = "usr/lib/x86_64-linux-gnu/libmpich.so.12.2.2"
STUB_SOURCE = """
#include <string.h>
int MPI_Get_library_version(char *version, int *length)
{
    strcpy(version, "pyenroot stub MPICH");
    *length = (int)strlen(version);
    return 0;
}
"""
# MPI_Get_library_version may be called before MPI_Init: no PMI needed.
SHOW_VERSION = ("import ctypes, os; mpi = ctypes.CDLL('libmpich.so.12'); buf = ctypes.create_string_buffer(8192); "
                "n = ctypes.c_int(); mpi.MPI_Get_library_version(buf, ctypes.byref(n)); "
                "print(buf.value.decode().splitlines()[0]); print(os.environ.get('SITE_FABRIC', '-'))")


@pytest.fixture(scope="module")
def stub_mpich_uri(mpich_image, pusher, session_dir) -> str:
    if not HOST_MPICH.exists() or not shutil.which("gcc"):
        pytest.skip("the host has no MPICH (libmpich12) or no gcc")
    build = session_dir / "stub-mpich"
    build.mkdir(exist_ok=True)
    (build / "stub.c").write_text(STUB_SOURCE)
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libmpich.so.12", "-o", str(build / "stub.so"),
                    str(build / "stub.c")], check=True, capture_output=True)
    stub = imagebuilder.tar_bytes([imagebuilder.Entry(IMAGE_MPICH, data=(build / "stub.so").read_bytes(),
                                                      mode=0o755)])
    image = imagebuilder.build_image([rootfs.mpi_rootfs_tar("mpich").read_bytes(), stub], compression="zstd",
                                     oci=True, cmd=["/bin/bash"])
    pusher.image("test/mpich-stub", "bookworm", image)
    return f"docker://{mpich_image.registry.host}#test/mpich-stub:bookworm"


def _site(user, text: str) -> dict[str, str]:
    sysconf = user.make_dir("sysconf")
    (sysconf / "mpi.conf").write_text(text)
    user.give(sysconf / "mpi.conf")
    return {"ENROOT_SYSCONF_PATH": str(sysconf)}


def test_host_mpich_replaces_the_containers(user, stub_mpich_uri):
    image = user.home / "stub.sqsh"
    done = user.pyenroot("import", "-o", str(image), stub_mpich_uri, env=HTTP)
    assert done.returncode == 0, done.stderr
    site = _site(user, f"# test site\nlibrary {HOST_MPICH}\ndevice /dev/pyenroot-no-such-device\n"
                       "env SITE_FABRIC=loopback\n")
    own = user.pyenroot("start", str(image), "python3", "-c", SHOW_VERSION, env=site)
    assert (own.returncode, own.stdout) == (0, "pyenroot stub MPICH\n-\n"), own.stderr
    host = user.pyenroot("start", "--env", "PYENROOT_MPI=host", str(image), "python3", "-c", SHOW_VERSION,
                         env=site)
    assert host.returncode == 0, host.stderr
    assert host.stdout.startswith("MPICH Version:") and host.stdout.endswith("\nloopback\n"), host.stdout
    listed = user.pyenroot("start", str(image), "sh", "-c", "ls /usr/local/pyenroot-mpi/lib",
                           env={**site, "PYENROOT_MPI": "host"})
    assert listed.stdout == "libmpich.so.12\n", listed.stderr
    # The image is unchanged: without the setting its own library is back.
    again = user.pyenroot("start", str(image), "python3", "-c", SHOW_VERSION, env=site)
    assert again.stdout.startswith("pyenroot stub MPICH"), again.stderr

    # A site MPI of another ABI, and a bad setting: one line each, no traceback.
    other = user.home / "libmpich.so.13"
    shutil.copy(HOST_MPICH, other)
    user.give(other)
    wrong = user.pyenroot("start", str(image), "true", env={**_site(user, f"library {other}\n"),
                                                             "PYENROOT_MPI": "host"})
    assert wrong.returncode != 0 and "libmpich.so.13 is not of the MPICH ABI" in wrong.stderr, wrong.stderr
    bad = user.pyenroot("start", str(image), "true", env={**site, "PYENROOT_MPI": "yes"})
    assert bad.returncode != 0 and "PYENROOT_MPI=yes: expected 'host' or 'none'" in bad.stderr
    assert "Traceback" not in wrong.stderr + bad.stderr
    missing = user.pyenroot("start", str(image), "true", env={"ENROOT_SYSCONF_PATH": str(user.home / "none"),
                                                               "PYENROOT_MPI": "host"})
    assert missing.returncode != 0 and "this site describes no MPI" in missing.stderr, missing.stderr
