"""`pyenroot export`, as the unprivileged user."""

from __future__ import annotations

import os
import subprocess

from tests.integration.test_create import debian_lz4_sqsh  # noqa: F401 (a fixture)


def create(user, image, name):
    result = user.pyenroot("create", "-n", name, str(image))
    assert result.returncode == 0, result.stderr


def data_dir(user):
    return user.home / ".local/share/enroot"


def listing(image) -> dict[str, str]:
    """path -> 'uid/gid' of every entry in a squashfs image."""
    out = subprocess.run(["unsquashfs", "-lln", str(image)], capture_output=True, text=True, check=True).stdout
    entries = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[-1].startswith("squashfs-root"):
            entries[fields[-1][len("squashfs-root"):] or "/"] = fields[1]
        elif "->" in fields and fields[-3].startswith("squashfs-root"):
            entries[fields[-3][len("squashfs-root"):]] = fields[1]
    return entries


def test_export_round_trip_keeps_changes(user, busybox_sqsh):
    create(user, busybox_sqsh, "src")
    root = data_dir(user) / "src"
    (root / "etc/os-release").write_text("changed inside\n")
    (root / ".lock").write_text("")
    user.run(["touch", str(root / "dev/null-stub")], check=True)
    user.run(["mkdir", str(root / "mnt-point")], check=True)
    user.run(["chmod", "0", str(root / "mnt-point")], check=True)

    result = user.pyenroot("export", "src")
    assert result.returncode == 0, result.stderr
    image = user.home / "src.sqsh"  # NAME.sqsh in the current directory
    assert image.stat().st_uid == user.uid
    entries = listing(image)
    assert entries["/etc/os-release"] == "0/0"  # -all-root
    assert "/dev" in entries and "/dev/null-stub" not in entries
    assert "/.lock" not in entries and "/mnt-point" not in entries
    assert [p for p in os.listdir(user.home) if p.startswith(".src.sqsh")] == []

    again = user.pyenroot("create", "-n", "copy", str(image))
    assert again.returncode == 0, again.stderr
    assert (data_dir(user) / "copy/etc/os-release").read_text() == "changed inside\n"
    assert (data_dir(user) / "copy/bin/busybox").is_file()


def test_export_refuses_to_overwrite(user, busybox_sqsh):
    create(user, busybox_sqsh, "box")
    out = user.home / "tmp" / "out.sqsh"
    assert user.pyenroot("export", "-o", str(out), "box").returncode == 0
    first = out.stat().st_ino
    refused = user.pyenroot("export", "-o", str(out), "box")
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"pyenroot: error: file already exists: {out}")
    assert out.stat().st_ino == first
    forced = user.pyenroot("export", "-f", "-o", str(out), "box")
    assert forced.returncode == 0, forced.stderr
    assert out.stat().st_ino != first  # replaced by rename, never written in place


def test_export_honours_squash_options(user, busybox_sqsh):
    create(user, busybox_sqsh, "box")
    out = user.home / "tmp" / "gzip.sqsh"
    result = user.pyenroot("export", "-o", str(out), "box", env={"ENROOT_SQUASH_OPTIONS": "-comp gzip -noI"})
    assert result.returncode == 0, result.stderr
    info = subprocess.run(["unsquashfs", "-s", str(out)], capture_output=True, text=True, check=True).stdout
    assert "Compression gzip" in info
    assert "Inodes are uncompressed" in info


def test_export_failure_leaves_nothing(user, busybox_sqsh):
    create(user, busybox_sqsh, "box")
    out = user.home / "tmp" / "broken.sqsh"
    result = user.pyenroot("export", "-o", str(out), "box", env={"ENROOT_SQUASH_OPTIONS": "-comp no-such-compressor"})
    assert result.returncode == 1
    assert result.stderr.startswith("pyenroot: error: export box: mksquashfs failed")
    assert os.listdir(user.home / "tmp") == []
    missing = user.pyenroot("export", "nosuch")
    assert missing.returncode == 1 and "no such container: nosuch" in missing.stderr


def test_export_debian_round_trip(user, debian_lz4_sqsh):  # noqa: F811
    create(user, debian_lz4_sqsh, "debian")
    root = data_dir(user) / "debian"
    (root / "etc/motd").write_text("exported\n")
    out = user.home / "tmp" / "debian.sqsh"
    result = user.pyenroot("export", "-o", str(out), "debian")
    assert result.returncode == 0, result.stderr
    assert listing(out)["/usr/bin/chfn"] == "0/0"
    create(user, out, "debian-copy")
    copy = data_dir(user) / "debian-copy"
    assert (copy / "etc/motd").read_text() == "exported\n"
    assert os.access(copy / "usr/bin/chfn", os.X_OK)
    assert (copy / "etc/debian_version").read_text() == (root / "etc/debian_version").read_text()
