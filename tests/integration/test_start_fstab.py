"""The fstab dialect at work: the image's /etc/fstab, x-create, old create=, nofail, x-detach, hostile targets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.test_start import make_container, put_file


@pytest.fixture
def bb(user, busybox_sqsh) -> Path:
    return make_container(user, busybox_sqsh)


def test_image_fstab_with_host_variable(user, bb):
    data = user.make_dir("imgdata")
    put_file(user, data / "f", "image fstab\n")
    put_file(user, bb / "etc/fstab", "${DATA_DIR} /mnt/img none x-create=dir,bind,ro\n")
    result = user.pyenroot("start", "bb", "cat", "/mnt/img/f", env={"DATA_DIR": str(data)})
    assert result.stdout == "image fstab\n", result.stderr


@pytest.mark.parametrize("option", ["x-create=file", "create=file", "x-create=auto"])
def test_create_file_target(user, bb, option):
    source = put_file(user, user.home / "single", "one file\n")
    result = user.pyenroot("start", "-m", f"{source}:/opt/deep/single:none:{option},bind", "bb", "cat",
                           "/opt/deep/single")
    assert result.stdout == "one file\n", result.stderr
    assert (bb / "opt/deep/single").is_file()


@pytest.mark.parametrize("option", ["x-create=dir", "create=dir", "x-create=auto"])
def test_create_dir_target(user, bb, option):
    source = user.make_dir("adir")
    put_file(user, source / "inner", "in dir\n")
    result = user.pyenroot("start", "-m", f"{source}:/srv/adir:none:{option},rbind", "bb", "cat", "/srv/adir/inner")
    assert result.stdout == "in dir\n", result.stderr


def test_short_forms(user, bb):
    source = user.make_dir("short")
    put_file(user, source / "f", "short\n")
    (bb / "scratch").mkdir()  # `tmpfs DST` has no x-create: the target must exist
    user.give(bb / "scratch")
    put_file(user, bb / "etc/fstab", f"{source}\ntmpfs /scratch\n")
    result = user.pyenroot("start", "bb", "sh", "-c", f"cat {source}/f && grep -c ' /scratch tmpfs' /proc/mounts")
    assert result.stdout.split() == ["short", "1"], result.stderr


@pytest.mark.parametrize("target", ["relative/path", "data"])
def test_cli_relative_target(user, bb, target):
    """`-m SRC:DST` with a relative DST mounts at DST below the root (it is not read as mount options)."""
    source = user.make_dir("reldata")
    put_file(user, source / "f", "relative\n")
    result = user.pyenroot("start", "-m", f"{source}:{target}", "bb", "cat", f"/{target}/f")
    assert (result.returncode, result.stdout) == (0, "relative\n"), result.stderr


def test_octal_escape_in_target(user, bb):
    source = user.make_dir("spaced")
    put_file(user, source / "f", "spaced\n")
    put_file(user, bb / "etc/fstab", f"{source} /mnt/with\\040space none x-create=dir,bind\n")
    assert user.pyenroot("start", "bb", "cat", "/mnt/with space/f").stdout == "spaced\n"


def test_missing_source(user, bb):
    failing = user.pyenroot("start", "-m", "/does/not/exist:/mnt/x:none:x-create=dir,bind", "bb", "true")
    assert failing.returncode != 0
    assert "/does/not/exist" in failing.stderr and "Traceback" not in failing.stderr
    tolerated = user.pyenroot("start", "-m", "/does/not/exist:/mnt/x:none:x-create=dir,bind,nofail,silent", "bb",
                              "echo", "ran")
    assert tolerated.stdout == "ran\n" and tolerated.returncode == 0
    assert "warning" not in tolerated.stderr
    loud = user.pyenroot("start", "-m", "/does/not/exist:/mnt/x:none:x-create=dir,bind,nofail", "bb", "true")
    assert loud.returncode == 0 and "warning" in loud.stderr


def test_detach(user, bb):
    put_file(user, bb / "etc/fstab", "none /tmp none x-detach\n")
    result = user.pyenroot("start", "bb", "sh", "-c", "grep -c ' /tmp ' /proc/mounts")
    assert result.stdout.strip() == "0"


def test_pass_minus_one_mounts_before_hooks(user, bb):
    user.make_dir(".config/enroot/hooks.d")
    source = user.make_dir("early")
    put_file(user, source / "f", "early\n")
    log = user.home / "seen"
    put_file(user, user.home / ".config/enroot/mounts.d/50-early.fstab",
             f"{source} /mnt/early none x-create=dir,bind 0 -1\n")
    put_file(user, user.home / ".config/enroot/hooks.d/50-look.sh",
             f'#!/bin/sh\ncat "$ENROOT_ROOTFS/mnt/early/f" > {log}\n', 0o755)
    assert user.pyenroot("start", "bb", "true").returncode == 0
    assert log.read_text() == "early\n"


def test_dotdot_target_is_refused(user, bb):
    """A `..` above the root is enroot's EXDEV, one line; nothing lands outside."""
    source = put_file(user, user.home / "payload", "payload\n")
    outside = user.make_dir("outside")
    hostile = "/../../../../../../.." + str(outside) + "/pwned"
    result = user.pyenroot("start", "-m", f"{source}:{hostile}:none:x-create=file,bind", "bb", "true")
    assert result.returncode == 1 and "Invalid cross-device link" in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (outside / "pwned").exists()


def test_absolute_symlink_to_root_stays_inside(user, bb):
    source = put_file(user, user.home / "payload", "payload\n")
    outside = user.make_dir("outside")
    os.symlink("/", bb / "escape")
    os.lchown(bb / "escape", user.uid, user.gid)
    target = "/escape" + str(outside) + "/pwned"
    result = user.pyenroot("start", "-m", f"{source}:{target}:none:x-create=file,bind", "bb", "cat", target)
    assert result.stdout == "payload\n", result.stderr
    assert not (outside / "pwned").exists()  # (inside, the path lies in the container's /tmp tmpfs)


@pytest.mark.parametrize("link", ["../../../../../../..", "/../.."])
def test_symlink_climbing_out_is_refused(user, bb, link):
    source = put_file(user, user.home / "payload", "payload\n")
    outside = user.make_dir("outside")
    os.symlink(link, bb / "escape")
    os.lchown(bb / "escape", user.uid, user.gid)
    target = "/escape" + str(outside) + "/pwned"
    result = user.pyenroot("start", "-m", f"{source}:{target}:none:x-create=file,bind", "bb", "true")
    assert result.returncode == 1 and "Invalid cross-device link" in result.stderr, result.stderr
    assert not (outside / "pwned").exists()


def test_symlinked_etc_file_stays_inside(user, bb):
    """An image whose /etc/hosts points at a host path gets the bind inside its own tree."""
    target_on_host = user.make_dir("victim") / "hosts"
    put_file(user, target_on_host, "victim\n")
    (bb / "etc/hosts").unlink(missing_ok=True)
    os.symlink(str(target_on_host), bb / "etc/hosts")
    os.lchown(bb / "etc/hosts", user.uid, user.gid)
    result = user.pyenroot("start", "bb", "cat", "/etc/hosts")
    assert result.returncode == 0, result.stderr
    assert target_on_host.read_text() == "victim\n"
    assert "victim" not in result.stdout
