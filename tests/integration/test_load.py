"""`pyenroot load`: an image straight into a container root filesystem, as the unprivileged user."""

from __future__ import annotations

import os

from pyenroot.devtools import imagebuilder as ib
from tests.integration.imagecheck import HTTP, push, uri

E = ib.Entry


def _data(user):
    return user.home / ".local/share/enroot"


def test_load_busybox(user, busybox_image):
    result = user.pyenroot("load", "-n", "box", busybox_image.uri, env=HTTP)
    assert result.returncode == 0, result.stderr
    rootfs = _data(user) / "box"
    assert (rootfs / "bin/busybox").is_file()
    assert (rootfs / "etc/pyenroot-test").read_text() == "second layer\n"
    assert (rootfs / "etc/rc").read_text().startswith(f"# enroot-provenance: {busybox_image.uri}")
    assert os.stat(rootfs / "bin/busybox").st_uid == user.uid
    assert [p.name for p in _data(user).iterdir() if p.name.startswith(".")] == []
    listed = user.pyenroot("list")
    assert "box" in listed.stdout.split()


def test_load_default_name_and_force(user, busybox_image):
    result = user.pyenroot("load", busybox_image.uri, env=HTTP)
    assert result.returncode == 0, result.stderr
    rootfs = _data(user) / "test+busybox+latest"
    assert rootfs.is_dir()
    marker = rootfs / "marker"
    marker.write_text("old")
    again = user.pyenroot("load", busybox_image.uri, env=HTTP)
    assert again.returncode != 0 and "already exists" in again.stderr
    assert marker.exists()
    forced = user.pyenroot("load", "-f", busybox_image.uri, env=HTTP)
    assert forced.returncode == 0, forced.stderr
    assert not marker.exists() and (rootfs / "bin/busybox").is_file()


def test_load_whiteouts_links_and_modes(user, registry, pusher):
    bottom = [E("a", "dir"), E("a/x", data=b"x"), E("a/y", data=b"y"), E("lib", "dir"),
              E("lib/real", data=b"original"), E("lib/alias", "hardlink", link="lib/real"),
              E("ro", "dir", mode=0o555), E("ro/f", data=b"f", mode=0o444), E("suid", data=b"s", mode=0o4755)]
    top = [E("a/.wh.x"), E("lib/real", data=b"replaced"), E("ro/g", data=b"g")]
    push(pusher, "test/load-merge", "v1", [bottom, top])
    result = user.pyenroot("load", "-n", "merged", uri(registry, "test/load-merge", "v1"), env=HTTP)
    assert result.returncode == 0, result.stderr
    root = _data(user) / "merged"
    assert not (root / "a/x").exists() and (root / "a/y").read_bytes() == b"y"
    assert (root / "lib/real").read_bytes() == b"replaced"
    assert (root / "lib/alias").read_bytes() == b"original"
    assert (root / "ro/f").read_bytes() == b"f" and (root / "ro/g").read_bytes() == b"g"
    assert os.stat(root / "suid").st_mode & 0o7777 == 0o755
    removed = user.pyenroot("remove", "-f", "merged")
    assert removed.returncode == 0, removed.stderr


def test_load_hostile_image_stays_inside(user, registry, pusher):
    outside = user.make_dir("outside")
    hostile = [
        E("link", "symlink", link=str(outside)),
        E("link/through", data=b"pwned"),
        E("up", "symlink", link="../../../.."),
        E("up/escape", data=b"pwned"),
        E("../../escape", data=b"pwned"),
        E("hard", "hardlink", link=str(outside / "target")),
        E("dev/sda", "block"),
        E("ok", data=b"ok"),
    ]
    # a lower layer's symlink must not carry an upper layer's entry out either
    lower = [E("lower", "symlink", link=str(outside))]
    upper = [E("lower/upper-entry", data=b"pwned")]
    push(pusher, "test/load-hostile", "v1", [lower, hostile, upper])
    (outside / "target").write_text("target")
    user.give(outside)
    result = user.pyenroot("load", "-n", "hostile", uri(registry, "test/load-hostile", "v1"), env=HTTP)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in outside.iterdir()) == ["target"]
    assert not (user.home / "escape").exists() and not (user.home.parent / "escape").exists()
    root = _data(user) / "hostile"
    assert (root / "ok").read_bytes() == b"ok"
    assert (root / "link").is_symlink() and (root / "up").is_symlink()
    assert not (root / "dev/sda").exists()
    # the upper layer's directory replaces the lower symlink (overlay semantics)
    assert (root / "lower").is_dir() and not (root / "lower").is_symlink()
    assert (root / "lower/upper-entry").read_bytes() == b"pwned"
