"""`pyenroot import` as the unprivileged user against the loopback registry."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest

from pyenroot.devtools import imagebuilder as ib
from tests.integration.imagecheck import HTTP, import_as, push, real_file, squashfs_tree, uri

E = ib.Entry


def test_import_busybox_default_name(user, busybox_image):
    result = user.pyenroot("import", busybox_image.uri, env=HTTP)
    assert result.returncode == 0, result.stderr
    output = user.home / "test+busybox+latest.sqsh"
    tree = squashfs_tree(output)
    assert tree["bin/busybox"].kind == "file"
    assert tree["etc/pyenroot-test"].data == b"second layer\n"
    assert b"IMAGE_VAR=busybox\n" in tree["etc/environment"].data
    assert tree["etc/rc"].data.startswith(f"# enroot-provenance: {busybox_image.uri}\n".encode())
    assert "etc/rc.local" in tree and "etc/fstab" in tree
    # unsquashfs (used by `create`) must accept the image, not only sqfs2tar
    listing = subprocess.run(["unsquashfs", "-l", str(output)], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "squashfs-root/bin/busybox" in listing.stdout


def test_import_refuses_to_overwrite(user, busybox_image):
    output = user.home / "existing.sqsh"
    output.write_bytes(b"precious")
    user.give(output)
    result = user.pyenroot("import", "-o", str(output), busybox_image.uri, env=HTTP)
    assert result.returncode != 0
    assert "already exists" in result.stderr and "ENROOT_FORCE_OVERRIDE" in result.stderr
    assert output.read_bytes() == b"precious"


def test_import_into_a_directory(user, busybox_image):
    """`-o DIR` writes DIR/NAME.sqsh with the default name; then that file exists and a second import refuses."""
    images = user.make_dir("images")
    result = user.pyenroot("import", "-o", str(images), busybox_image.uri, env=HTTP)
    assert result.returncode == 0, result.stderr
    assert os.listdir(images) == ["test+busybox+latest.sqsh"]
    assert "bin/busybox" in squashfs_tree(images / "test+busybox+latest.sqsh")
    again = user.pyenroot("import", "-o", str(images), busybox_image.uri, env=HTTP)
    assert again.returncode == 1 and f"file already exists: {images}/test+busybox+latest.sqsh" in again.stderr
    missing = user.pyenroot("import", "-o", f"{user.home}/no-such-dir/", busybox_image.uri, env=HTTP)
    assert missing.returncode == 1 and "directory does not exist" in missing.stderr, missing.stderr


def test_force_override_replaces_only_with_a_complete_image(user, busybox_image, registry, pusher):
    output = user.home / "existing.sqsh"
    output.write_bytes(b"precious")
    user.give(output)
    pusher.image("test/broken-force", "v1", ib.build_image([b"this is not a tar archive" * 100]))
    failed = user.pyenroot("import", "-o", str(output), uri(registry, "test/broken-force", "v1"),
                           env={**HTTP, "ENROOT_FORCE_OVERRIDE": "y"})
    assert failed.returncode != 0
    assert output.read_bytes() == b"precious"  # a failed import leaves the old file as it was
    result = user.pyenroot("import", "-o", str(output), busybox_image.uri, env={**HTTP, "ENROOT_FORCE_OVERRIDE": "y"})
    assert result.returncode == 0, result.stderr
    assert f"wrote {output}" in result.stderr
    assert squashfs_tree(output)["bin/busybox"].kind == "file"
    assert [p.name for p in user.home.iterdir() if "existing" in p.name] == ["existing.sqsh"]


def test_failed_import_leaves_nothing(user, registry, pusher):
    image = ib.build_image([b"this is not a tar archive" * 100])
    pusher.image("test/broken", "v1", image)
    result, output = import_as(user, uri(registry, "test/broken", "v1"))
    assert result.returncode != 0
    assert "not a valid tar" in result.stderr or "corrupt" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()
    assert not [p for p in user.home.iterdir() if ".sqsh" in p.name]


@pytest.mark.parametrize("compression,oci,gzip_program", [("gzip", False, "pigz"), ("gzip", True, "gzip"),
                                                          ("gzip", True, None),
                                                          ("zstd", True, None), ("none", True, None)])
def test_layer_media_types(user, registry, pusher, compression, oci, gzip_program):
    repository = f"test/media-{compression}-{'oci' if oci else 'docker'}"
    push(pusher, repository, "v1", [[E("data", "dir"), E("data/file", data=compression.encode())],
                                    [E("data/more", data=b"top")]], compression=compression, oci=oci)
    env = {"ENROOT_GZIP_PROGRAM": gzip_program} if gzip_program else None
    result, output = import_as(user, uri(registry, repository, "v1"), "out.sqsh", env)
    assert result.returncode == 0, result.stderr
    tree = squashfs_tree(output)
    assert tree["data/file"].data == compression.encode()
    assert tree["data/more"].data == b"top"


def _platform_images() -> dict:
    images = {}
    for arch, variant in (("amd64", None), ("arm64", "v8"), ("ppc64le", None)):
        images[("linux", arch, variant)] = ib.build_image(
            [ib.tar_bytes([E("arch", data=arch.encode())])], arch=arch, oci=True, variant=variant)
    return images


@pytest.mark.parametrize("oci", [True, False])
def test_index_and_arch(user, registry, pusher, oci):
    images = _platform_images()
    index = ib.build_index(images, oci=oci)
    repository = f"test/multiarch-{'oci' if oci else 'docker'}"
    pusher.index(repository, "v1", index, list(images.values()))
    for wanted, expected in (("aarch64", b"arm64"), ("x86_64", b"amd64"), ("ppc64le", b"ppc64le")):
        result, output = import_as(user, uri(registry, repository, "v1"), f"{wanted}.sqsh", None, "--arch", wanted)
        assert result.returncode == 0, result.stderr
        assert squashfs_tree(output)["arch"].data == expected
    result, _ = import_as(user, uri(registry, repository, "v1"), "s390x.sqsh", None, "--arch", "s390x")
    assert result.returncode != 0
    assert "linux/amd64" in result.stderr  # the error lists the platforms offered


def test_nested_index(user, registry, pusher):
    images = _platform_images()
    inner = ib.build_index(images, oci=True)
    for image in images.values():
        for blob in [image.config, *image.layers]:
            pusher.blob("test/nested", blob)
        pusher.manifest("test/nested", image.digest, image.manifest)
    pusher.manifest("test/nested", inner.digest, inner)
    outer = ib.Blob(ib.OCI_INDEX, json.dumps({"schemaVersion": 2, "mediaType": ib.OCI_INDEX,
                                              "manifests": [inner.descriptor(platform={
                                                  "os": "linux", "architecture": "arm64", "variant": "v8"})]}).encode())
    pusher.manifest("test/nested", "v1", outer)
    result, output = import_as(user, uri(registry, "test/nested", "v1"), "n.sqsh", None, "--arch", "aarch64")
    assert result.returncode == 0, result.stderr
    assert squashfs_tree(output)["arch"].data == b"arm64"


def test_digest_pinning(user, registry, pusher):
    image = push(pusher, "test/pinned", "v1", [[E("pinned", data=b"1")]])
    push(pusher, "test/pinned", "v1", [[E("pinned", data=b"2")]])  # the tag moves on
    pinned = f"docker://{registry.host}#test/pinned@{image.digest}"
    result, output = import_as(user, pinned)
    assert result.returncode == 0, result.stderr
    assert squashfs_tree(output)["pinned"].data == b"1"
    wrong = f"docker://{registry.host}#test/pinned@sha256:{'0' * 64}"
    result, output = import_as(user, wrong, "wrong.sqsh")
    assert result.returncode != 0 and not output.exists()


def test_whiteouts_and_opaque_directories(user, registry, pusher):
    bottom = [E("a", "dir"), E("a/x", data=b"x"), E("a/y", data=b"y"), E("b", "dir"), E("b/old", data=b"old"),
              E("b/sub", "dir"), E("b/sub/deep", data=b"deep"), E("c", "dir"), E("c/file", data=b"c"),
              E("d", "dir"), E("d/inner", data=b"d"), E("f", data=b"file")]
    top = [E("a", "dir"), E("a/.wh.x"), E("b", "dir"), E("b/.wh..wh..opq"), E("b/new", data=b"new"), E(".wh.c"),
           E("d", data=b"d is a file now"), E("f", "dir"), E("f/inside", data=b"f is a dir now"),
           E(".wh.f")]  # whiteout and entry in the same layer: the entry stays
    push(pusher, "test/whiteouts", "v1", [bottom, top])
    result, output = import_as(user, uri(registry, "test/whiteouts", "v1"))
    assert result.returncode == 0, result.stderr
    tree = squashfs_tree(output)
    names = set(tree)
    assert "a/x" not in names and tree["a/y"].data == b"y"
    assert {"b/old", "b/sub", "b/sub/deep"}.isdisjoint(names) and tree["b/new"].data == b"new"
    assert not any(n == "c" or n.startswith("c/") for n in names)
    assert tree["d"].kind == "file" and "d/inner" not in names
    assert tree["f"].kind == "dir" and tree["f/inside"].data == b"f is a dir now"
    assert not any(".wh." in n for n in names)


def test_hard_links_and_symlinks(user, registry, pusher):
    bottom = [E("lib", "dir"), E("lib/real", data=b"original"), E("lib/alias", "hardlink", link="lib/real"),
              E("lib/alias2", "hardlink", link="lib/real"), E("lib/sym", "symlink", link="real"),
              E("lib/keep", data=b"keep"), E("lib/keep-link", "hardlink", link="lib/keep")]
    top = [E("lib", "dir"), E("lib/real", data=b"replaced")]
    push(pusher, "test/links", "v1", [bottom, top])
    result, output = import_as(user, uri(registry, "test/links", "v1"))
    assert result.returncode == 0, result.stderr
    tree = squashfs_tree(output)
    assert real_file(tree, "lib/real") == b"replaced"
    # links made in the lower layer keep the content they had there
    assert real_file(tree, "lib/alias") == b"original"
    assert real_file(tree, "lib/alias2") == b"original"
    assert tree["lib/sym"].kind == "symlink" and tree["lib/sym"].link == "real"
    assert real_file(tree, "lib/keep-link") == b"keep"


def test_modes_and_setuid(user, registry, pusher):
    push(pusher, "test/modes", "v1", [[E("bin", "dir"), E("bin/suid", data=b"#!", mode=0o4755),
                                       E("bin/private", data=b"p", mode=0o000), E("tmp", "dir", mode=0o1777),
                                       E("ro", "dir", mode=0o555), E("ro/file", data=b"r", mode=0o444)]])
    result, output = import_as(user, uri(registry, "test/modes", "v1"))
    assert result.returncode == 0, result.stderr
    tree = squashfs_tree(output)
    assert tree["bin/suid"].mode & 0o7777 == 0o755
    assert tree["bin/private"].mode & 0o777 == 0o400
    assert tree["tmp"].mode & 0o7777 == 0o1777
    assert tree["ro"].mode & 0o777 == 0o755
    assert tree["ro/file"].data == b"r"


def test_hostile_image(user, registry, pusher):
    outside = user.make_dir("outside")
    hostile = [
        E("../../escape", data=b"escape"),
        E(f"{outside}/abs", data=b"absolute"),
        E("link", "symlink", link=str(outside)),
        E("link/through", data=b"through a symlink"),
        E("hard", "hardlink", link="../../../etc/passwd"),
        E("hard2", "hardlink", link="/etc/passwd"),
        E("../.wh.etc"),
        E("null", "char"),
        E(".wh.."),
        E("ok", data=b"ok"),
    ]
    push(pusher, "test/hostile", "v1", [[E("etc", "dir"), E("etc/keep", data=b"keep")], hostile])
    result, output = import_as(user, uri(registry, "test/hostile", "v1"))
    assert result.returncode == 0, result.stderr
    assert list(outside.iterdir()) == []
    tree = squashfs_tree(output)
    assert tree["ok"].data == b"ok" and tree["etc/keep"].data == b"keep"
    assert tree["link"].kind == "symlink" and "link/through" not in tree
    assert "hard" not in tree and "hard2" not in tree and "null" not in tree
    assert tree[str(outside).lstrip("/") + "/abs"].data == b"absolute"  # made relative, kept inside
    for name in ("../../escape", "link/through", "hard", "null", "../.wh.etc"):
        assert name in result.stderr, name


def test_rc_quoting(user, registry, pusher):
    args = ["a b", "it's", 'say "hi"', "$HOME", "`id`", "back\\slash", "*"]
    push(pusher, "test/quoting", "v1", [[E("x", data=b"x")]], entrypoint=["printf", "%s\\n"], cmd=args,
         env=["PATH=/usr/bin:/bin", "WITH_SPACE=a b"], labels={"org.test": "multi\nline"}, volumes=["/data"])
    result, output = import_as(user, uri(registry, "test/quoting", "v1"))
    assert result.returncode == 0, result.stderr
    tree = squashfs_tree(output)
    rc = user.home / "rc"
    rc.write_bytes(tree["etc/rc"].data)
    ran = user.run(["sh", str(rc)], check=True)
    assert ran.stdout.splitlines() == args
    ran = user.run(["sh", str(rc), "one arg", "$two"], check=True)
    assert ran.stdout.splitlines() == ["one arg", "$two"]
    assert b"# org.test multi line\n" in tree["etc/rc"].data
    assert tree["etc/environment"].data == b"PATH=/usr/bin:/bin\nWITH_SPACE=a b\n"
    assert tree["etc/fstab"].data == b"${ENROOT_ROOTFS}/data /data none x-create=dir,bind,rw,nosuid,nodev\n"


def test_workdir_created(user, registry, pusher):
    push(pusher, "test/workdir", "v1", [[E("x", data=b"x")]], workdir="/srv/my app", cmd=["pwd"])
    result, output = import_as(user, uri(registry, "test/workdir", "v1"))
    assert result.returncode == 0, result.stderr
    tree = squashfs_tree(output)
    assert tree["srv/my app"].kind == "dir"
    assert b"cd '/srv/my app'" in tree["etc/rc"].data


def test_generated_files_shadow_the_image(user, registry, pusher):
    push(pusher, "test/shadow", "v1", [[E("etc", "dir"), E("etc/rc", data=b"image rc"),
                                        E("etc/environment", data=b"IMAGE=1\n"), E("etc/other", data=b"o")]],
         env=["FROM_CONFIG=1"])
    result, output = import_as(user, uri(registry, "test/shadow", "v1"))
    assert result.returncode == 0, result.stderr
    tree = squashfs_tree(output)
    assert tree["etc/environment"].data == b"FROM_CONFIG=1\n"
    assert tree["etc/rc"].data.startswith(b"# enroot-provenance:")
    assert tree["etc/other"].data == b"o"


def test_squash_options(user, busybox_image):
    env = {"ENROOT_SQUASH_OPTIONS": "-comp zstd -Xcompression-level 3 -b 256K"}
    result, output = import_as(user, busybox_image.uri, "zstd.sqsh", env)
    assert result.returncode == 0, result.stderr
    info = subprocess.run(["unsquashfs", "-s", str(output)], capture_output=True, text=True, check=True).stdout
    assert "Compression zstd" in info and "Block size 262144" in info


def test_squash_options_fall_back_to_mksquashfs(user, busybox_image):
    result, output = import_as(user, busybox_image.uri, "lzo.sqsh", {"ENROOT_SQUASH_OPTIONS": "-comp lzo -noD"})
    assert result.returncode == 0, result.stderr
    info = subprocess.run(["unsquashfs", "-s", str(output)], capture_output=True, text=True, check=True).stdout
    assert "Compression lzo" in info and "Data is uncompressed" in info
    assert squashfs_tree(output)["etc/pyenroot-test"].data == b"second layer\n"


def test_bad_squash_option(user, busybox_image):
    result, output = import_as(user, busybox_image.uri, "bad.sqsh", {"ENROOT_SQUASH_OPTIONS": "-frobnicate"})
    assert result.returncode != 0 and "-frobnicate" in result.stderr
    assert not output.exists()


def test_verbose_phase_times(user, busybox_image):
    output = user.home / "v.sqsh"
    result = user.pyenroot("-v", "import", "-o", str(output), busybox_image.uri, env=HTTP)
    assert result.returncode == 0, result.stderr
    for phase in ("resolve", "download", "merge", "squash"):
        assert phase in result.stderr


def test_debian_image(user, debian_image):
    result, output = import_as(user, debian_image.uri, "debian.sqsh")
    assert result.returncode == 0, result.stderr
    tree = squashfs_tree(output)
    assert tree["etc/debian_version"].data.startswith(b"12")
    assert tree["usr/bin/dpkg"].kind == "file"
    assert not any(n.startswith("dev/") and tree[n].kind in ("char", "block") for n in tree)
    assert b"exec '/bin/bash'" in tree["etc/rc"].data
    warnings = [line for line in result.stderr.splitlines() if line.startswith("pyenroot: warning:")]
    assert len(warnings) == 1 and re.fullmatch(
        r"pyenroot: warning: \d+ device nodes under dev/ not created; /dev comes from the host at start",
        warnings[0]), result.stderr


def test_unwritable_output_directory(user, busybox_image):
    locked = user.make_dir("locked")
    locked.chmod(0o555)
    result, _ = import_as(user, busybox_image.uri, "locked/x.sqsh")
    assert result.returncode != 0 and "cannot write" in result.stderr and "Traceback" not in result.stderr
    assert list(locked.iterdir()) == []


def test_kill_mid_import_leaves_nothing(user, registry, pusher):
    big = [E("big", "dir")] + [E(f"big/{i}", data=os.urandom(1 << 20)) for i in range(48)]
    push(pusher, "test/killme", "v1", [big, [E("top", data=b"t")]])
    output = user.home / "killed.sqsh"
    argv = [str(user.wrapper), "import", "-o", str(output), uri(registry, "test/killme", "v1")]
    process = subprocess.Popen(argv, env=user.env(**HTTP), cwd=user.home, user=user.uid, group=user.gid,
                               extra_groups=[], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # wait until the layers are fetched (the summary line), then kill in the middle of the merge
    line = process.stderr.readline()
    assert "layers" in line, line
    process.send_signal(signal.SIGKILL)
    process.wait()
    leftovers = [p.name for p in user.home.iterdir() if "killed" in p.name]
    assert leftovers in ([], ["killed.sqsh"])
    if leftovers:  # the kill came after the image was complete
        assert squashfs_tree(output)["top"].data == b"t"
        output.unlink()
    result, output = import_as(user, uri(registry, "test/killme", "v1"), "killed.sqsh")
    assert result.returncode == 0, result.stderr
    assert squashfs_tree(output)["top"].data == b"t"


def test_concurrent_imports_to_one_file(user, busybox_image):
    output = user.home / "shared.sqsh"
    argv = [str(user.wrapper), "import", "-o", str(output), busybox_image.uri]
    processes = [subprocess.Popen(argv, env=user.env(**HTTP), cwd=user.home, user=user.uid, group=user.gid,
                                  extra_groups=[], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    results = [(p.wait(), p.stderr.read()) for p in processes]
    assert sum(1 for rc, _ in results if rc == 0) >= 1
    for rc, stderr in results:
        assert rc == 0 or "already exists" in stderr, stderr
    assert squashfs_tree(output)["etc/pyenroot-test"].data == b"second layer\n"
    assert [p.name for p in user.home.iterdir() if "shared" in p.name] == ["shared.sqsh"]
