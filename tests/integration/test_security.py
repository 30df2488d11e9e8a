"""What an image and another local user must not reach (docs/security.md), tried as the unprivileged user.

Images are built byte-exact and pushed to the loopback registry; the second account `pyenroot-other` plays the
other person on the node who plants directories and files under names the test user's pyenroot would use.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from pyenroot.devtools import imagebuilder
from pyenroot.devtools.imagebuilder import Entry as E
from tests.integration.test_start import data_path

ENV = {"ENROOT_ALLOW_HTTP": "y"}
PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"


def _created(user, registry, pusher, busybox_rootfs_dir, name: str, extra: list[E], volumes: list[str]):
    """Import an image (busybox + `extra` entries, declaring `volumes`) and create container `name` from it."""
    layers = [imagebuilder.tar_of_directory(busybox_rootfs_dir)]
    if extra:
        layers.append(imagebuilder.tar_bytes(extra))
    pusher.image(f"test/{name}", "v1", imagebuilder.build_image(layers, volumes=volumes, env=[PATH]))
    imported = user.pyenroot("import", "-o", f"{name}.sqsh", f"docker://{registry.host}#test/{name}:v1", env=ENV)
    assert imported.returncode == 0, imported.stderr
    created = user.pyenroot("create", "-n", name, f"{name}.sqsh")
    assert created.returncode == 0, created.stderr
    return data_path(user) / name


def _one_error(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("pyenroot: error:")]
    assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


# ------------------------------------------------------------------------------------------------ volumes


def test_volume_with_dotdot_stays_inside_the_image(user, registry, pusher, busybox_rootfs_dir):
    outside = user.make_dir("outside")
    volume = "/../../../../../../../.." + str(outside)
    rootfs = _created(user, registry, pusher, busybox_rootfs_dir, "volup", [], [volume])
    assert (rootfs / "etc/fstab").read_text().split()[:2] == [f"${{ENROOT_ROOTFS}}{outside}", str(outside)]
    result = user.pyenroot("start", "--root", "volup", "sh", "-c",
                           f"echo planted > {outside}/file && cat {outside}/file")
    assert result.stdout == "planted\n", result.stderr
    assert list(outside.iterdir()) == []


def test_volume_through_an_image_symlink_stays_inside_the_image(user, registry, pusher, busybox_rootfs_dir):
    outside = user.make_dir("outside")
    _created(user, registry, pusher, busybox_rootfs_dir, "vollink", [E("vol", "symlink", link=str(outside))],
             ["/vol"])
    result = user.pyenroot("start", "--root", "vollink", "sh", "-c", "echo planted > /vol/file && cat /vol/file")
    assert result.stdout == "planted\n", result.stderr
    assert list(outside.iterdir()) == []


def test_in_root_source_that_climbs_out_is_refused(user, registry, pusher, busybox_rootfs_dir):
    """An image imported before Volumes were normalised still cannot bind a host path: `${ENROOT_ROOTFS}/..`
    is resolved within the root at start."""
    outside = user.make_dir("outside")
    rootfs = _created(user, registry, pusher, busybox_rootfs_dir, "oldvol", [], [])
    (rootfs / "etc/fstab").write_text(f"${{ENROOT_ROOTFS}}/../../../../../..{outside} /mnt/x none "
                                      "x-create=dir,bind,rw\n")
    result = user.pyenroot("start", "--root", "oldvol", "sh", "-c", "echo planted > /mnt/x/file")
    assert "Invalid cross-device link" in _one_error(result)
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------------------------------------ targets


def test_relative_targets_are_taken_from_the_container_root(user, registry, pusher, busybox_rootfs_dir):
    data = user.make_dir("data")
    (data / "f").write_text("hello\n")
    user.give(data / "f")
    rootfs = _created(user, registry, pusher, busybox_rootfs_dir, "reltarget", [], [])
    (rootfs / "etc/fstab").write_text(f"{data} mnt/fstab none bind,x-create=dir 0 0\n")
    result = user.pyenroot("start", "-m", f"{data}:relative/path", "reltarget", "cat", "/relative/path/f",
                           "/mnt/fstab/f")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\nhello\n"


@pytest.mark.parametrize("target", ["../../../../escaped", "up/escaped", "/abs/../../../escaped"])
def test_targets_that_leave_the_root_are_refused(user, registry, pusher, busybox_rootfs_dir, target):
    data = user.make_dir("data")
    rootfs = _created(user, registry, pusher, busybox_rootfs_dir, "escape", [], [])
    os.symlink("../../../../../../..", rootfs / "up")
    os.lchown(rootfs / "up", user.uid, user.gid)
    result = user.pyenroot("start", "-m", f"{data}:{target}:none:bind,x-create=dir", "escape", "true")
    assert "Invalid cross-device link" in _one_error(result)
    assert not any(p.name == "escaped" for p in (user.home.parent, user.home, rootfs.parent))


# ------------------------------------------------------------------------------------------------ other users


@pytest.fixture
def shared_tmp(session_dir, user):
    """A /tmp-like directory (root's, sticky, writable by all), private to this test."""
    path = session_dir / f"shared-tmp-{user.home.name}"
    path.mkdir()
    path.chmod(0o1777)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def test_runtime_dir_planted_by_another_user_is_refused(user, other_user, shared_tmp, busybox_sqsh):
    planted = shared_tmp / f"pyenroot-run-{user.uid}"
    other_user.run(["mkdir", "-m", "0777", str(planted)], check=True)
    env = {"XDG_RUNTIME_DIR": None, "TMPDIR": str(shared_tmp)}
    result = user.pyenroot("start", str(busybox_sqsh), "true", env=env)
    error = _one_error(result)
    assert str(planted) in error and other_user.name in error
    assert list(planted.iterdir()) == []


def test_runtime_dir_fallback_is_made_private(user, shared_tmp, busybox_sqsh):
    env = {"XDG_RUNTIME_DIR": None, "TMPDIR": str(shared_tmp)}
    result = user.pyenroot("start", str(busybox_sqsh), "cat", "/etc/os-release", env=env)
    assert result.returncode == 0, result.stderr
    made = shared_tmp / f"pyenroot-run-{user.uid}"
    for path in (made, made / "enroot"):
        st = path.lstat()
        assert (st.st_uid, st.st_mode & 0o7777) == (user.uid, 0o700), path


def test_runtime_dir_writable_by_others_is_refused(user, busybox_sqsh):
    """Even the user's own runtime directory is refused while others may write into it."""
    runtime = user.home / ".run"
    runtime.chmod(0o777)
    result = user.pyenroot("start", str(busybox_sqsh), "true")
    assert "writable by group or others" in _one_error(result)


def test_blob_planted_in_a_shared_cache_is_refused(user, other_user, shared_tmp, busybox_image):
    """A site's shared ENROOT_CACHE_PATH: another user put a layer under the digest's name. Import refuses it."""
    blobs = shared_tmp / "blobs" / "sha256"
    other_user.run(["mkdir", "-p", "-m", "0777", str(blobs)], check=True)
    layer = busybox_image.image.layers[1]
    entries = [E("etc", "dir"), E("etc/pyenroot-test", data=b"planted\n")]
    planted = imagebuilder.compress(imagebuilder.tar_bytes(entries), "gzip")
    other_user.run(["sh", "-c", f"cat > {blobs / layer.digest.split(':')[1]}"], input=planted, text=False, check=True)
    result = user.pyenroot("import", "-o", "out.sqsh", busybox_image.uri,
                           env={**ENV, "ENROOT_CACHE_PATH": str(shared_tmp)})
    error = _one_error(result)
    assert other_user.name in error and "refusing to use it" in error
    assert not (user.home / "out.sqsh").exists()
