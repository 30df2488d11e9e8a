"""The host MPI hook's pure part: the site file, the ABI check, the mounts (against a fake site config)."""

from pathlib import Path

import pytest

from pyenroot.gpu import ldcache
from pyenroot.mpi import plan as mpi_plan

SITE = """\
# the site's MPICH over its fabric
abi mpich
library /opt/site/lib/libmpich.so.12
dependency /opt/site/lib/libfabric.so.1
directory /etc/libfabric
device /dev/infiniband
device /dev/cxi0
env FI_PROVIDER=verbs
env EMPTY=
"""
FLAGS = ldcache.FLAGS_BY_MACHINE["x86_64"]


def test_site_file_parses():
    site = mpi_plan.parse_site_file(SITE, "/etc/enroot/mpi.conf")
    assert site.libraries == ("/opt/site/lib/libmpich.so.12",)
    assert site.dependencies == ("/opt/site/lib/libfabric.so.1",)
    assert site.directories == ("/etc/libfabric",)
    assert site.devices == ("/dev/infiniband", "/dev/cxi0")
    assert site.environ == {"FI_PROVIDER": "verbs", "EMPTY": ""}


@pytest.mark.parametrize(("text", "message"), [
    ("library lib/libmpich.so.12\n", "line 1: 'lib/libmpich.so.12' is not an absolute path"),
    ("librarry /x\n", "line 1: expected one of abi, library"),
    ("library /x/libmpich.so.12\nenv 1X=2\n", "line 2: env needs NAME=VALUE"),
    ("abi openmpi\nlibrary /x/libmpi.so.40\n", "abi 'openmpi' is not supported"),
    ("# nothing\n", "names no MPI library"),
])
def test_site_file_errors_name_the_line(text, message):
    with pytest.raises(mpi_plan.MpiError, match=message.replace("(", r"\(")) as info:
        mpi_plan.parse_site_file(text, "/etc/enroot/mpi.conf")
    assert "/etc/enroot/mpi.conf" in info.value.message and "\n" not in info.value.message


def test_requested():
    assert not mpi_plan.requested({}, {})
    assert not mpi_plan.requested({"PYENROOT_MPI": "none"}, {})
    assert mpi_plan.requested({"PYENROOT_MPI": "host"}, {})
    assert mpi_plan.requested({}, {"PYENROOT_MPI": "host"})
    with pytest.raises(mpi_plan.MpiError, match="PYENROOT_MPI=yes: expected 'host' or 'none'"):
        mpi_plan.requested({"PYENROOT_MPI": "yes"}, {})


def test_sonames():
    assert mpi_plan.soname("libmpich.so.12.2.2") == "libmpich.so.12"
    assert mpi_plan.soname("libfabric.so.1") == "libfabric.so.1"
    assert mpi_plan.soname("libfoo.so") == "libfoo.so"
    assert mpi_plan.soname_parts("libmpi.so.40.30.4") == ("libmpi", 40)


def test_abi_check():
    host = {"libmpich.so.12": "libmpich.so.12.2.2"}
    mpi_plan.check_abi(host, {"libmpich.so.12": "libmpich.so.12.1.8", "libc.so.6": "libc.so.6"})
    mpi_plan.check_abi(host, {})  # an image without MPI gets the host's
    with pytest.raises(mpi_plan.MpiError) as info:
        mpi_plan.check_abi(host, {"libmpi.so.40": "libmpi.so.40.30.4"})
    assert "libmpi.so.40.30.4" in info.value.message and "libmpich.so.12.2.2" in info.value.message
    with pytest.raises(mpi_plan.MpiError, match="not of the MPICH ABI"):
        mpi_plan.check_abi({"libmpi.so.40": "libmpi.so.40.30.4"}, {})
    with pytest.raises(mpi_plan.MpiError, match=r"include no libmpi\.so\.N"):
        mpi_plan.check_abi({"libfabric.so.1": "libfabric.so.1.18.2"}, {})


def test_plan_mounts_cache_and_environment(tmp_path):
    site = mpi_plan.parse_site_file(SITE, "mpi.conf")
    names = {"/opt/site/lib/libmpich.so.12": "libmpich.so.12", "/opt/site/lib/libfabric.so.1": "libfabric.so.1"}
    image_cache = ldcache.build([ldcache.CacheEntry("libmpich.so.12", "/usr/lib/libmpich.so.12", FLAGS),
                                 ldcache.CacheEntry("libc.so.6", "/lib/libc.so.6", FLAGS)])
    plan = mpi_plan.make_plan(site, names, image_cache, {"libmpich.so.12": "/usr/lib/libmpich.so.12"},
                              {"/etc/libfabric", "/dev/infiniband"}, tmp_path, FLAGS)
    targets = [line.split()[1] for line in plan.mounts]
    assert targets[0] == "/usr/local/pyenroot-mpi"  # the tmpfs before the binds into it
    assert "/usr/local/pyenroot-mpi/lib/libmpich.so.12" in targets
    assert "/usr/local/pyenroot-mpi/lib/libfabric.so.1" in targets
    assert "/usr/lib/libmpich.so.12" in targets  # the image's own copy is covered too
    assert "/etc/libfabric" in targets and "/dev/infiniband" in targets
    assert "/dev/cxi0" not in targets  # this node has none
    assert all(",ro," in line or "tmpfs" in line or "/dev/" in line for line in plan.mounts)
    assert plan.environ == {"FI_PROVIDER": "verbs", "EMPTY": ""}
    [(path, data)] = plan.files.items()
    assert Path(path).parent == tmp_path and "/etc/ld.so.cache" in targets
    entries = {e.name: e.path for e in ldcache.parse(data)}
    assert entries["libmpich.so.12"] == "/usr/local/pyenroot-mpi/lib/libmpich.so.12"
    assert entries["libfabric.so.1"] == "/usr/local/pyenroot-mpi/lib/libfabric.so.1"
    assert entries["libc.so.6"] == "/lib/libc.so.6"
