"""`#ENROOT_*` directives of batch files, and the start arguments batch builds from them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pyenroot.commands import batch
from pyenroot.config import Settings
from pyenroot.errors import ConfigError

BATCH_FILE = """\
#!/usr/bin/env -S pyenroot batch
#SBATCH --nodes=1
#ENROOT_ROOTFS=busybox
# ENROOT_REMAP_ROOT y
#\tENROOT_MOUNT_HOME=no
#ENROOT_DATA_PATH ${HOME}/containers
#ENROOT_SQUASH_OPTIONS="-comp zstd"
##ENROOT_UNSHARE_NET=y
ENROOT_UNSHARE_PID=y
  #ENROOT_UNSHARE_IPC=y
#ENROOT_ROOTFS_RW=y
#ENROOT_ROOTFS busybox2

environ() { echo "A=1"; }
"""


def test_directives(tmp_path):
    path = tmp_path / "job.batch"
    path.write_text(BATCH_FILE)
    found = batch.read_directives(path, {"HOME": "/home/alice"})
    assert found["ENROOT_ROOTFS"] == "busybox2"  # the last one wins
    assert found["ENROOT_REMAP_ROOT"] == "y"
    assert found["ENROOT_MOUNT_HOME"] == "no"
    assert found["ENROOT_DATA_PATH"] == "/home/alice/containers"
    assert found["ENROOT_SQUASH_OPTIONS"] == "-comp zstd"
    # Only lines starting with '#' then blanks then ENROOT_ are directives.
    assert "ENROOT_UNSHARE_NET" not in found
    assert "ENROOT_UNSHARE_PID" not in found
    assert "ENROOT_UNSHARE_IPC" not in found


def test_directives_become_settings(tmp_path):
    path = tmp_path / "job.batch"
    path.write_text(BATCH_FILE)
    directives = batch.read_directives(path, {"HOME": "/h"})
    directives.pop("ENROOT_ROOTFS")
    settings = Settings({"ENROOT_MOUNT_HOME": "y"}).overridden(**directives)
    assert settings.flag("ENROOT_REMAP_ROOT")
    assert not settings.flag("ENROOT_MOUNT_HOME")  # a 'no' directive switches a setting off
    assert settings.flag("ENROOT_ROOTFS_WRITABLE")  # old spelling


def test_no_directives(tmp_path):
    path = tmp_path / "plain"
    path.write_text("#!/bin/sh\necho hi\n")
    assert batch.read_directives(path, {}) == {}


def test_unreadable_batch_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read batch file"):
        batch.read_directives(tmp_path / "missing", {})
    with pytest.raises(ConfigError, match="directory"):
        batch.read_directives(tmp_path, {})


def test_missing_rootfs_directive(tmp_path):
    path = tmp_path / "job"
    path.write_text("#ENROOT_REMAP_ROOT=y\n")
    args = argparse.Namespace(config=str(path), command=[], debug=False, verbose=0)
    with pytest.raises(ConfigError, match="missing directive ENROOT_ROOTFS"):
        batch.run(args, Settings({}))


def test_start_options():
    args = argparse.Namespace(config="/jobs/job.batch", command=["sh", "-c", "echo --rw"], debug=False, verbose=1)
    options = batch.start_options(args, "busybox")
    assert options.conf == Path("/jobs/job.batch")
    assert options.target == "busybox"
    assert options.command == ("sh", "-c", "echo --rw")
    assert options.writable is None and options.remap_root is None and options.env == () and options.mounts == ()
    assert batch.start_options(args, "-odd-name").target == "-odd-name"


@pytest.mark.parametrize(("stderr", "line"), [
    ("/x/job: line 4: syntax error near unexpected token `fi'\n/x/job: line 4: `fi fi'\n",
     "line 4: syntax error near unexpected token `fi'"),
    ("/x/job: line 4: syntax error: unexpected end of file\n", "line 4: syntax error: unexpected end of file"),
    ("/x/job: line 1: unexpected EOF while looking for matching `\"'\n",
     "line 1: unexpected EOF while looking for matching `\"'"),
    ("", "syntax error"),
])
def test_syntax_error_is_bash_first_line(stderr, line):
    from pyenroot.runtime import configscript

    assert configscript.syntax_error(stderr, "/x/job") == line
