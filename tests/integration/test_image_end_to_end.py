"""Registry image -> import -> create -> start, as the unprivileged user: what the image format promises."""

from __future__ import annotations

from pyenroot.devtools import imagebuilder

ENV = {"ENROOT_ALLOW_HTTP": "y"}


def test_image_with_volumes_starts_and_volume_is_writable(user, registry, pusher, busybox_rootfs_dir):
    image = imagebuilder.build_image([imagebuilder.tar_of_directory(busybox_rootfs_dir)], volumes=["/data"],
                                     env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
    pusher.image("test/volumes", "v1", image)
    uri = f"docker://{registry.host}#test/volumes:v1"
    assert user.pyenroot("import", "-o", "vol.sqsh", uri, env=ENV).returncode == 0
    assert user.pyenroot("create", "-n", "vol", "vol.sqsh").returncode == 0
    plain = user.pyenroot("start", "vol", "sh", "-c", "test -d /data && echo mounted", env=ENV)
    assert plain.stdout == "mounted\n", plain.stderr
    # The root filesystem is read-only, the volume (bound onto itself by /etc/fstab) is not. Like enroot's,
    # the mount point is created with mode 0000, so only --root (full capabilities in the namespace) writes.
    result = user.pyenroot("start", "--root", "vol", "sh", "-c", "echo kept > /data/file && cat /data/file", env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "kept"
    assert (user.home / ".local/share/enroot/vol/data/file").read_text() == "kept\n"


def test_digest_pinned_import_default_name_is_a_valid_container_name(user, busybox_image):
    uri = f"docker://{busybox_image.registry.host}#{busybox_image.repository}@{busybox_image.image.digest}"
    result = user.pyenroot("import", uri, env=ENV)
    assert result.returncode == 0, result.stderr
    produced = [p.name for p in user.home.glob("*.sqsh")]
    assert produced == [f"test+busybox+{busybox_image.image.digest}.sqsh"]
    created = user.pyenroot("create", produced[0])
    assert created.returncode == 0, created.stderr
    started = user.pyenroot("start", produced[0].removesuffix(".sqsh"), "cat", "/etc/pyenroot-test")
    assert started.stdout == "second layer\n", started.stderr
