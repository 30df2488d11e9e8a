"""`pyenroot create`, as the unprivileged user: names, atomicity, permissions."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.processes import blocked_after, wait_gone


def data_dir(user) -> Path:
    return user.home / ".local/share/enroot"


def listed(user) -> list[str]:
    result = user.pyenroot("list")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_create_and_list(user, busybox_sqsh):
    before = time.time()
    result = user.pyenroot("create", str(busybox_sqsh))
    assert result.returncode == 0, result.stderr
    # In a pipe: the phase time line, then what was made; stdout stays free for scripts.
    assert result.stderr.splitlines()[-1] == "[pyenroot] created container busybox" and result.stdout == ""
    assert all(line.startswith("[pyenroot] time: ") for line in result.stderr.splitlines()[:-1])
    root = data_dir(user) / "busybox"
    assert root.stat().st_mtime >= int(before)  # the creation time, not the image's 1970
    assert (root / "bin/busybox").is_file()
    assert (root / "etc/os-release").read_text().startswith('NAME="pyenroot busybox"')
    assert root.stat().st_uid == user.uid
    assert listed(user) == ["busybox"]
    assert oct(data_dir(user).stat().st_mode & 0o777) == oct(0o700)


def test_create_with_name_and_force(user, busybox_sqsh):
    assert user.pyenroot("create", "-n", "nvidia+pytorch+24.01", str(busybox_sqsh)).returncode == 0
    assert user.pyenroot("create", "--name", "pyxis_1234_step", str(busybox_sqsh)).returncode == 0
    marker = data_dir(user) / "pyxis_1234_step/etc/marker"
    marker.write_text("old")

    again = user.pyenroot("create", "-n", "pyxis_1234_step", str(busybox_sqsh))
    assert again.returncode == 1
    assert again.stderr.startswith("pyenroot: error: container already exists: pyxis_1234_step")
    assert "Traceback" not in again.stderr
    assert marker.exists()

    forced = user.pyenroot("create", "-f", "-n", "pyxis_1234_step", str(busybox_sqsh))
    assert forced.returncode == 0, forced.stderr
    assert not marker.exists()
    assert listed(user) == ["nvidia+pytorch+24.01", "pyxis_1234_step"]
    assert not [p for p in os.listdir(data_dir(user)) if p.startswith(".")]


@pytest.mark.parametrize("name", ["", "a/b", "../escape", ".", "..", ".hidden", "-dash", "x" * 129, "sp ace",
                                  "new\nline", "semi;colon"])
def test_bad_names_create_nothing(user, busybox_sqsh, name):
    before = tree(user.home)
    result = user.pyenroot("create", f"--name={name}", str(busybox_sqsh))
    assert result.returncode == 2
    assert result.stderr.startswith("pyenroot: error: invalid container name")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # the message and perhaps a hint
    assert tree(user.home) == before
    assert not (user.home.parent / "escape").exists()


def test_bad_default_name(user, busybox_sqsh):
    odd = user.home / "tmp" / "odd name.sqsh"
    odd.write_bytes(busybox_sqsh.read_bytes())
    user.give(odd)
    result = user.pyenroot("create", str(odd))
    assert result.returncode == 2
    assert "invalid container name 'odd name'" in result.stderr
    assert not data_dir(user).exists() or not os.listdir(data_dir(user))


def test_not_a_squashfs_image(user):
    bogus = user.home / "tmp" / "bogus.sqsh"
    bogus.write_text("not an image\n")
    user.give(bogus)
    result = user.pyenroot("create", str(bogus))
    assert result.returncode == 1
    assert result.stderr.startswith("pyenroot: error: not a squashfs image")
    missing = user.pyenroot("create", str(user.home / "missing.sqsh"))
    assert missing.returncode == 1 and "no such image file" in missing.stderr
    assert listed(user) == []


def test_restrictive_modes_are_fixed(user, session_dir, tmp_path):
    """An image with unreadable files and unwritable directories can be created, read and removed."""
    src = tmp_path / "src"
    (src / "locked/inner").mkdir(parents=True)
    (src / "locked/inner/secret").write_text("s")
    (src / "locked/inner/secret").chmod(0)
    (src / "locked/tool").write_text("#!/bin/sh\n")
    (src / "locked/tool").chmod(0o111)
    (src / "locked/inner").chmod(0o500)
    (src / "locked").chmod(0o000)
    image = session_dir / "images" / "restrictive.sqsh"
    image.parent.mkdir(exist_ok=True, mode=0o755)
    subprocess.run(["mksquashfs", str(src), str(image), "-all-root", "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    image.chmod(0o644)
    src.chmod(0o755)

    result = user.pyenroot("create", "-n", "restrictive", str(image))
    assert result.returncode == 0, result.stderr
    root = data_dir(user) / "restrictive"
    assert user.run(["cat", str(root / "locked/inner/secret")]).stdout == "s"
    assert os.stat(root / "locked/tool").st_mode & 0o777 == 0o511
    removed = user.pyenroot("remove", "-f", "restrictive")
    assert removed.returncode == 0, removed.stderr
    assert not root.exists()


def test_kill_during_create_leaves_nothing(user, busybox_sqsh):
    with blocked_after(user, "unsquashfs", ["create", "-n", "victim", str(busybox_sqsh)]) as process:
        # Unpacked but not yet renamed: invisible to list.
        assert listed(user) == []
        hidden = [p for p in os.listdir(data_dir(user)) if p.startswith(".")]
        assert hidden
        os.killpg(process.pid, signal.SIGKILL)
    wait_gone(process.tool_pid)

    assert listed(user) == []
    assert not (data_dir(user) / "victim").exists()
    rerun = user.pyenroot("create", "-n", "victim", str(busybox_sqsh))
    assert rerun.returncode == 0, rerun.stderr
    assert listed(user) == ["victim"]
    assert (data_dir(user) / "victim/bin/busybox").is_file()
    assert [p for p in os.listdir(data_dir(user)) if p.startswith(".")] == []


@pytest.fixture(scope="module")
def debian_lz4_sqsh(session_dir, debian_rootfs_tar) -> Path:
    """Debian minbase (with its /dev nodes and setuid files) as tar2sqfs writes it with lz4, like import."""
    out = session_dir / "images" / "debian-tar2sqfs-lz4.sqsh"
    out.parent.mkdir(exist_ok=True, mode=0o755)
    if not out.exists():
        with debian_rootfs_tar.open("rb") as tar:
            subprocess.run(["tar2sqfs", "-q", "-c", "lz4", "-f", str(out)], stdin=tar, check=True,
                           capture_output=True)
    out.chmod(0o644)
    return out


def test_create_debian_image_from_tar2sqfs(user, debian_lz4_sqsh):
    result = user.pyenroot("create", "-n", "debian", str(debian_lz4_sqsh))
    assert result.returncode == 0, result.stderr
    root = data_dir(user) / "debian"
    assert (root / "etc/debian_version").is_file()
    assert os.stat(root / "usr/bin/chfn").st_mode & 0o111
    assert user.run(["cat", str(root / "etc/shadow")]).returncode == 0  # u+r fixed
    assert not (root / "dev/null").exists()  # device nodes cannot be made unprivileged; start mounts /dev
    assert (root / "dev/pts").is_dir()
    removed = user.pyenroot("remove", "-f", "debian")
    assert removed.returncode == 0, removed.stderr
    assert listed(user) == []


def test_device_nodes_in_image_are_skipped(user, session_dir, tmp_path):
    src = tmp_path / "src"
    (src / "dev").mkdir(parents=True)
    (src / "etc").mkdir()
    (src / "etc/hostname").write_text("devices\n")
    os.mknod(src / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    image = session_dir / "images" / "devices.sqsh"
    image.parent.mkdir(exist_ok=True, mode=0o755)
    subprocess.run(["mksquashfs", str(src), str(image), "-all-root", "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    image.chmod(0o644)
    result = user.pyenroot("create", str(image))
    assert result.returncode == 0, result.stderr
    assert (data_dir(user) / "devices/etc/hostname").read_text() == "devices\n"
    assert not (data_dir(user) / "devices/dev/null").exists()
