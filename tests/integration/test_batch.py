"""`pyenroot batch`, as the unprivileged user: directives, the config script, and use as a `#!` interpreter."""

from __future__ import annotations

import pytest


@pytest.fixture
def container(user, busybox_sqsh) -> str:
    result = user.pyenroot("create", "-n", "box", str(busybox_sqsh))
    assert result.returncode == 0, result.stderr
    return "box"


def write_script(user, name: str, text: str, *, executable: bool = False):
    path = user.home / name
    path.write_text(text)
    path.chmod(0o755 if executable else 0o644)
    return user.give(path)


BATCH = """\
#ENROOT_ROOTFS=box
#ENROOT_REMAP_ROOT=y
# ENROOT_ROOTFS_WRITABLE y

environ() {
  echo "BATCH_VAR=from-batch"
}
"""


def test_batch_directives_and_config_script(user, container):
    job = write_script(user, "job.batch", BATCH)
    result = user.pyenroot("batch", str(job), "sh", "-c", 'id -u; echo "$BATCH_VAR"; echo written > /batch-file')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["0", "from-batch"]  # REMAP_ROOT directive, environ()
    # ROOTFS_WRITABLE directive: the write went to the container's root filesystem.
    assert (user.home / ".local/share/enroot/box/batch-file").read_text() == "written\n"


def test_batch_exit_code(user, container):
    job = write_script(user, "job.batch", "#ENROOT_ROOTFS=box\n")
    assert user.pyenroot("batch", str(job), "sh", "-c", "exit 3").returncode == 3


def test_batch_as_interpreter(user, container):
    script = write_script(user, "job.sh", "#!/usr/bin/env -S pyenroot batch\n#ENROOT_ROOTFS=box\n"
                                          "#ENROOT_REMAP_ROOT=n\n", executable=True)
    result = user.run([str(script), "sh", "-c", "id -u; cat /etc/os-release"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert str(user.uid) in lines
    assert 'NAME="pyenroot busybox"' in lines


def test_batch_without_rootfs_directive(user, container):
    job = write_script(user, "job.batch", "#ENROOT_REMAP_ROOT=y\necho hi\n")
    result = user.pyenroot("batch", str(job), "true")
    assert result.returncode == 1
    assert result.stderr.startswith(f"pyenroot: error: missing directive ENROOT_ROOTFS in {job}")
    missing = user.pyenroot("batch", str(user.home / "nosuch.batch"))
    assert missing.returncode == 1 and "cannot read batch file" in missing.stderr


def test_batch_with_image_rootfs(user, busybox_sqsh):
    job = write_script(user, "image.batch", f"#ENROOT_ROOTFS={busybox_sqsh}\n")
    result = user.pyenroot("batch", str(job), "cat", "/etc/os-release")
    assert result.returncode == 0, result.stderr
    assert 'NAME="pyenroot busybox"' in result.stdout.splitlines()


def test_batch_with_relative_path_runs_hooks(user, container):
    write_script(user, "rel.batch", "#ENROOT_ROOTFS=box\nhooks() {\n  echo HOOKED=yes >> \"$ENROOT_ENVIRON\"\n}\n")
    result = user.pyenroot("batch", "rel.batch", "sh", "-c", 'echo "$HOOKED"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "yes"
