"""Steps never start from what another local user wrote (docs/security.md): the squashfs cache of imports."""

from __future__ import annotations

import shutil
import subprocess


def test_squashfs_cache_planted_by_another_user_is_not_used(slurm, other_user, busybox_image, busybox_uri,
                                                            busybox_rootfs_dir, session_dir, tmp_path):
    """A site's shared ENROOT_CACHE_PATH (sticky, writable by all): another user put an image under the name
    the step would look up (the manifest digest). The step imports its own instead."""
    shared = session_dir / f"shared-cache-{slurm.user.home.name}"
    shared.mkdir()
    shared.chmod(0o1777)
    tree = tmp_path / "planted"
    shutil.copytree(busybox_rootfs_dir, tree, symlinks=True)
    (tree / "etc/pyenroot-test").write_text("planted\n")
    planted = shared / "squashfs" / f"{busybox_image.image.digest.replace(':', '-')}.sqsh"
    planted.parent.mkdir(mode=0o755)
    subprocess.run(["mksquashfs", str(tree), str(planted), "-all-root", "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    planted.chmod(0o644)
    other_user.give(planted.parent)
    try:
        done = slurm.srun(f"--container-image={busybox_uri}", "cat", "/etc/pyenroot-test",
                          env={"ENROOT_CACHE_PATH": str(shared)})
        assert (done.returncode, done.stdout) == (0, "second layer\n"), done.stderr
        assert "not using the squashfs cache" in done.stderr and other_user.name in done.stderr
    finally:
        shutil.rmtree(shared, ignore_errors=True)
