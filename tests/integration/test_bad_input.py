"""Bad input, as the unprivileged user: every verb fails with one clear line and leaves nothing behind.

Each case checks what a user sees (exit code, `pyenroot: error: ...` plus at most a `hint:` line, never a
traceback) and what is on disk afterwards (no new file anywhere in the private HOME: data path, cache, output
directories). Full disks are tiny tmpfs mounts; kills are SIGKILL of the whole process group (hidden leftovers
are cleaned by the next run) or SIGTERM of pyenroot alone (it cleans up before exiting).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pyenroot.devtools import imagebuilder as ib
from tests.helpers.processes import blocked_after
from tests.integration.imagecheck import push, uri

# No retries: a refused connection fails at once (retrying it is tested with the registry client).
HTTP = {"ENROOT_ALLOW_HTTP": "y", "ENROOT_TRANSFER_RETRIES": "0"}
CLOSED_PORT_URI = "docker://127.0.0.1:1#test/nothing:latest"  # nothing listens on port 1


def data_dir(user) -> Path:
    return user.home / ".local/share/enroot"


def check_error(result: subprocess.CompletedProcess, code: int | None = None, says: str = "") -> None:
    """One error line (and at most one hint line), the right exit code, no traceback."""
    context = f"exit {result.returncode}, stderr: {result.stderr!r}"
    assert result.returncode != 0, context
    if code is not None:
        assert result.returncode == code, context
    assert "Traceback" not in result.stderr, context
    # import and load report progress on stderr ("[pyenroot] ..." lines) before they fail
    lines = [line for line in result.stderr.splitlines() if not line.startswith("[pyenroot] ")]
    assert lines and lines[0].startswith("pyenroot: error: "), context
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), context
    assert says in lines[0], context
    # the CLI's last line of defence caught what no code path put into words: a bug to fix, not a message
    assert not lines[0].endswith(("(bug)", "(os-error)")), context


def snapshot(root: Path) -> set[str]:
    """Every file below `root`, and every directory that holds one or looks like work in progress; plain empty
    directories do not count (settings may create the data, cache or runtime directory)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        here = Path(dirpath)
        found.update(str((here / name).relative_to(root)) for name in filenames)
        for name in dirnames:
            relative = str((here / name).relative_to(root))
            if (here / name).is_symlink() or name.startswith(".pyenroot") or ".tmp" in name \
                    or any(f.startswith(relative + "/") for f in found):
                found.add(relative)
    return found


@dataclass
class BadFiles:
    """Things that are not squashfs images, made by root and readable by everyone unless said otherwise."""

    base: Path
    empty: Path = field(init=False)
    truncated: Path = field(init=False)
    text: Path = field(init=False)
    private: Path = field(init=False)  # root-only 0600
    directory: Path = field(init=False)


@pytest.fixture(scope="module")
def bad(session_dir, busybox_sqsh) -> BadFiles:
    files = BadFiles(session_dir / "bad-input")
    files.base.mkdir(exist_ok=True, mode=0o755)
    files.empty = files.base / "empty.sqsh"
    files.empty.write_bytes(b"")
    files.truncated = files.base / "truncated.sqsh"
    files.truncated.write_bytes(busybox_sqsh.read_bytes()[: busybox_sqsh.stat().st_size // 2])
    files.text = files.base / "text.sqsh"
    files.text.write_text("not an image\n")
    for path in (files.empty, files.truncated, files.text):
        path.chmod(0o644)
    files.private = files.base / "private.sqsh"
    shutil.copyfile(busybox_sqsh, files.private)
    files.private.chmod(0o600)
    files.directory = files.base / "dir.sqsh"
    files.directory.mkdir(exist_ok=True, mode=0o755)
    return files


@pytest.fixture
def box(user, busybox_sqsh) -> str:
    result = user.pyenroot("create", "-n", "box", str(busybox_sqsh))
    assert result.returncode == 0, result.stderr
    return "box"


@pytest.fixture
def tiny_fs(user) -> Iterator[Path]:
    """A 512 KiB tmpfs owned by the user (mounted by root): too small for the busybox root filesystem."""
    mountpoint = user.make_dir("full")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=512k,mode=0700,uid={user.uid},gid={user.gid}",
                    "pyenroot-full", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def fails_cleanly(user, args: list[str], code: int | None, says: str = "", env: dict[str, str] | None = None,
                  ignore: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run a failing command and check its message and that nothing new appeared in HOME, except below the
    HOME-relative paths in `ignore` (a started container's own directory, complete cache entries)."""
    def seen() -> set[str]:
        return {p for p in snapshot(user.home)
                if not any(p == i or p.startswith(i + "/") or i.startswith(p + "/") for i in ignore)}

    before = seen()
    result = user.pyenroot(*args, env=env)
    check_error(result, code, says)
    assert seen() == before, f"{args}: left behind: {seen() - before}"
    return result


def only_verified_blobs(cache: Path) -> None:
    """A failed import may keep verified blobs (named by their digest), lock files, complete layer copies and
    complete built images (built in the cache before the output could not be written), nothing partial."""
    from pyenroot.image.built import BuiltImages
    from pyenroot.image.layercopy import CopyRecord

    images = BuiltImages(cache / "enroot" if (cache / "enroot").is_dir() else cache)
    recorded = {name for name, record, _ in images.entries() if record is not None}
    for path in cache.rglob("*"):
        if path.is_file() and path.parent.name == "squashfs":
            assert path.name.split(".")[0] in recorded, path
        elif path.is_file() and path.parent.name == "copies":
            hex_part, _, suffix = path.name.partition(".")
            assert len(hex_part) == 64 and suffix in ("zst", "json"), path
            record = CopyRecord.from_json(path.with_suffix(".json").read_text())
            assert record is not None and record.size == path.with_suffix(".zst").stat().st_size, path
        elif path.is_file():
            assert path.parent.name in ("sha256", "locks"), path
            assert len(path.name.removesuffix(".lock").removesuffix(".copy")) == 64, path


# ------------------------------------------------------------------------------------ arguments


USAGE_CASES = [
    (["create"], "required"),
    (["create", "a.sqsh", "b.sqsh"], "unrecognized arguments"),
    (["create", "-n"], "expected one argument"),
    (["start"], "required"),
    (["exec"], "required"),
    (["export"], "required"),
    (["remove"], "required"),
    (["import"], "required"),
    (["load"], "required"),
    (["digest"], "required"),
    (["batch"], "required"),
    (["list", "extra"], "unrecognized arguments"),
    (["version", "extra"], "unrecognized arguments"),
    (["info", "--nope"], "unrecognized arguments"),
    (["doctor", "extra"], "unrecognized arguments"),
    (["frobnicate"], "unknown command"),
    (["create", "--no-such-option", "x.sqsh"], "unrecognized arguments"),
]


@pytest.mark.parametrize("args, says", USAGE_CASES, ids=["_".join(args) for args, _ in USAGE_CASES])
def test_usage_errors(user, args, says):
    fails_cleanly(user, args, 2, says)


# ------------------------------------------------------------------------------------ names


BAD_NAMES = ["../escape", "a/b", ".", "..", "/abs", "x" * 300, "héllo", "-dash", ".hidden", "", "sp ace", "tab\t"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[f"name{i}" for i in range(len(BAD_NAMES))])
def test_bad_names_everywhere(user, busybox_sqsh, name):
    for args in (["create", "-n", name, str(busybox_sqsh)], ["load", "-n", name, CLOSED_PORT_URI],
                 ["export", "--", name], ["remove", "-f", "--", name]):
        fails_cleanly(user, args, None, env=HTTP)
    assert not (data_dir(user).parent / "escape").exists()


def test_one_naming_rule(user, busybox_sqsh):
    """Every character of the rule works for every verb; the hint states the rule the docs state."""
    name = "a._+:@-Z9"
    created = user.pyenroot("create", "-n", name, str(busybox_sqsh))
    assert created.returncode == 0, created.stderr
    started = user.pyenroot("start", name, "echo", "started")
    assert started.stdout == "started\n", started.stderr
    assert user.pyenroot("list").stdout.split() == [name]
    assert user.pyenroot("remove", "-f", name).returncode == 0
    refused = fails_cleanly(user, ["create", "-n", "a*b", str(busybox_sqsh)], 2, "invalid container name 'a*b'")
    assert refused.stderr.splitlines()[1] == \
        "hint: use letters, digits and '._+:@-', starting with a letter or digit, at most 128 characters"


def test_nonexistent_names(user):
    fails_cleanly(user, ["remove", "-f", "nosuch"], 1, "no such container: nosuch")
    fails_cleanly(user, ["export", "nosuch"], 1, "no such container: nosuch")
    fails_cleanly(user, ["start", "nosuch", "true"], 1, "no such")


def test_remove_checks_every_name_first(user, box):
    fails_cleanly(user, ["remove", "-f", box, "nosuch"], 1, "no such container: nosuch")
    assert (data_dir(user) / box).is_dir()


def test_symlink_in_data_path_is_not_a_container(user, box, busybox_rootfs_dir):
    link = data_dir(user) / "link"
    link.symlink_to(busybox_rootfs_dir)
    os.lchown(link, user.uid, user.gid)
    for args in (["start", "link", "true"], ["export", "-o", "link.sqsh", "link"], ["remove", "-f", "link"]):
        fails_cleanly(user, args, 1, "no such container: link")
    assert user.pyenroot("list").stdout.split() == [box]
    assert link.is_symlink() and (busybox_rootfs_dir / "bin/busybox").exists()


def test_container_without_any_mode_bits(user, box):
    root = data_dir(user) / box
    root.chmod(0)
    fails_cleanly(user, ["export", "-o", "box.sqsh", box], 1, f"cannot read container {box}: Permission denied")
    removed = user.pyenroot("remove", "-f", box)
    assert removed.returncode == 0, removed.stderr
    assert os.listdir(data_dir(user)) == []


# ------------------------------------------------------------------------------------ image files


def test_create_and_start_refuse_what_is_not_an_image(user, bad):
    cases = [
        ("/dev/null", "not a regular file"),
        ("/etc/passwd", "not a squashfs image"),
        (str(bad.empty), "not a squashfs image"),
        (str(bad.text), "not a squashfs image"),
        (str(bad.truncated), "truncated squashfs image"),
        (str(bad.private), "permission denied"),
        (str(bad.directory), "not a regular file"),
        (str(bad.base / "missing.sqsh"), "no such image file"),
        ("/etc/passwd/x.sqsh", "no such image file"),
        ("/root/x.sqsh", "cannot read image"),  # a directory the user may not search
        ("/proc/1/root", "cannot read image"),  # a link the user may not follow
    ]
    for image, says in cases:
        fails_cleanly(user, ["create", "-n", "bad", image], 1, says)
        assert not (data_dir(user) / "bad").exists()
        fails_cleanly(user, ["start", image, "true"], 1, says)
    # Every image is refused before anything is made, so the data directory need not even exist.
    assert not data_dir(user).exists() or [p for p in os.listdir(data_dir(user)) if p.startswith(".")] == []


# ------------------------------------------------------------------------------------ settings


def test_bad_settings_values(user, box, busybox_sqsh):
    a_file = user.home / "tmp" / "a-file"
    a_file.write_text("")
    user.give(a_file)
    fails_cleanly(user, ["create", "-n", "p", str(busybox_sqsh)], 1, "ENROOT_MAX_PROCESSORS must be a whole number",
                  env={"ENROOT_MAX_PROCESSORS": "lots"})
    fails_cleanly(user, ["export", "-o", "x.sqsh", box], 1, "ENROOT_MAX_PROCESSORS",
                  env={"ENROOT_MAX_PROCESSORS": "1.5"})
    fails_cleanly(user, ["import", CLOSED_PORT_URI], 1, "ENROOT_MAX_CONNECTIONS",
                  env={**HTTP, "ENROOT_MAX_CONNECTIONS": "many"})
    fails_cleanly(user, ["digest", CLOSED_PORT_URI], 1, "ENROOT_CONNECT_TIMEOUT",
                  env={**HTTP, "ENROOT_CONNECT_TIMEOUT": "soon"})
    fails_cleanly(user, ["export", "-o", "x.sqsh", box], None, "ENROOT_SQUASH_OPTIONS",
                  env={"ENROOT_SQUASH_OPTIONS": '"unclosed'})
    for data in (str(a_file), "/root/forbidden", "/proc/no/such/dir"):
        fails_cleanly(user, ["create", "-n", "p", str(busybox_sqsh)], 1, env={"ENROOT_DATA_PATH": data})
        if data != "/proc/no/such/dir":  # a data path that does not exist yet just holds no containers
            fails_cleanly(user, ["list"], 1, env={"ENROOT_DATA_PATH": data})
    for verb in (["start", box, "true"], ["export", box], ["remove", "-f", box]):
        fails_cleanly(user, verb, 1, "cannot read the data directory /root", env={"ENROOT_DATA_PATH": "/root"})
    fails_cleanly(user, ["create", "-n", "p", str(busybox_sqsh)], 1, "cannot write to the data directory /root",
                  env={"ENROOT_DATA_PATH": "/root"})
    fails_cleanly(user, ["import", f"docker-archive://{a_file}"], 1, env={"ENROOT_CONFIG_PATH": "/root"})
    fails_cleanly(user, ["digest", CLOSED_PORT_URI], 1, env={**HTTP, "ENROOT_CONFIG_PATH": "/root"})
    fails_cleanly(user, ["digest", CLOSED_PORT_URI], 1, "PYENROOT_CA_BUNDLE",
                  env={**HTTP, "PYENROOT_CA_BUNDLE": str(user.home / "no-such-ca.pem")})
    fails_cleanly(user, ["digest", CLOSED_PORT_URI], 1, "PYENROOT_REGISTRY_MIRRORS",
                  env={**HTTP, "PYENROOT_REGISTRY_MIRRORS": "garbage"})
    fails_cleanly(user, ["digest", CLOSED_PORT_URI], 1, "PYENROOT_REGISTRY_MIRRORS",
                  env={**HTTP, "PYENROOT_REGISTRY_MIRRORS": "127.0.0.1:1=mirror..example:99999"})
    bad_proxy = fails_cleanly(user, ["digest", CLOSED_PORT_URI], 1, "cannot talk to 127.0.0.1:1",
                              env={**HTTP, "http_proxy": "http://[not-a-host"})
    assert "proxy" in bad_proxy.stderr.splitlines()[1]


@pytest.mark.parametrize("content, says", [
    ("ENROOT_DATA_PATH=(\n", "invalid configuration file"),
    ("ENROOT_DATA_PATH $(\n", "invalid configuration file"),
    ("1bad=3\n", "invalid configuration file"),
], ids=["open-paren", "open-substitution", "bad-key"])
def test_bad_settings_file(user, content, says):
    sysconf = user.make_dir("sysconf")
    (sysconf / "enroot.conf").write_text(content)
    for verb in (["list"], ["info"], ["version"]):
        fails_cleanly(user, verb, 1, says, env={"ENROOT_SYSCONF_PATH": str(sysconf)})


def test_unreadable_settings_file(user, session_dir):
    sysconf = session_dir / "bad-input-sysconf"
    sysconf.mkdir(exist_ok=True, mode=0o755)
    (sysconf / "enroot.conf").write_text("ENROOT_ALLOW_HTTP=y\n")
    (sysconf / "enroot.conf").chmod(0o600)
    fails_cleanly(user, ["list"], 1, "cannot read", env={"ENROOT_SYSCONF_PATH": str(sysconf)})
    fails_cleanly(user, ["list"], 1, "cannot read /root/enroot.conf", env={"ENROOT_SYSCONF_PATH": "/root"})


def test_unreadable_config_directory_holds_nothing(user, box):
    # like a missing one: no environ.d, mounts.d or hooks.d files
    result = user.pyenroot("start", box, "true", env={"ENROOT_CONFIG_PATH": "/root"})
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------ registry and URIs


@pytest.mark.parametrize("uri, code, says", [
    ("notauri", 2, "invalid image reference"),
    ("ftp://host/image", 2, "invalid image reference"),
    ("docker://", 2, "invalid image reference"),
    ("docker://UPPER/Case", 2, "invalid image reference"),
    ("docker://a#b#c", 2, "invalid image reference"),
    ("docker://127.0.0.1:99999#a/b", 2, "is not a registry host"),
    ("docker://127.0.0.1:1#../../etc/passwd", 2, "starts and ends with a letter or digit"),
    ("docker://127.0.0.1:1#acc/busybox:bad!tag", 2, "invalid tag 'bad!tag'"),
    ("docker://127.0.0.1:1#acc/busybox:1 ", 2, "trailing whitespace"),
    (CLOSED_PORT_URI, 1, "unreachable"),
], ids=["no-scheme", "ftp", "empty", "upper-case", "two-hashes", "port-too-big", "dot-dot", "bad-tag",
        "trailing-space", "closed-port"])
def test_bad_uris(user, uri, code, says):
    for verb in ("import", "load", "digest"):
        fails_cleanly(user, [verb, uri], code, says, env=HTTP)


@pytest.mark.parametrize("url, meant", [
    ("http://127.0.0.1:1/acc/busybox:1", "docker://127.0.0.1:1#acc/busybox:1"),
    ("https://127.0.0.1:1/acc/busybox:1", "docker://127.0.0.1:1#acc/busybox:1"),
    ("127.0.0.1:1/acc/busybox:1", "docker://127.0.0.1:1#acc/busybox:1"),
], ids=["http", "https", "no-scheme"])
def test_urls_suggest_the_docker_uri(user, url, meant):
    for verb in ("import", "load", "digest"):
        result = fails_cleanly(user, [verb, url], 2, "scheme", env=HTTP)
        hint = result.stderr.splitlines()[-1]
        assert hint.startswith(f"hint: did you mean {meant}?"), hint
        assert ("ENROOT_ALLOW_HTTP=yes" in hint) == (not url.startswith("https")), hint


def test_missing_images_in_a_live_registry(user, busybox_image):
    registry = busybox_image.registry
    for source in (uri(registry, "test/no-such-image", "v1"), uri(registry, busybox_image.repository, "no-such-tag"),
                   f"docker://{registry.host}#{busybox_image.repository}@sha256:{'0' * 64}"):
        fails_cleanly(user, ["import", "-o", "out.sqsh", source], 1, env=HTTP)
        fails_cleanly(user, ["load", "-n", "out", source], 1, env=HTTP)
        fails_cleanly(user, ["digest", source], 1, env=HTTP)


def test_bad_archives(user, bad):
    fails_cleanly(user, ["import", f"docker-archive://{bad.text}"], 1)
    fails_cleanly(user, ["import", f"oci-archive://{bad.directory}"], 1)
    fails_cleanly(user, ["import", f"oci-archive://{bad.base / 'missing.tar'}"], None, "no such file")
    fails_cleanly(user, ["load", "-n", "x", f"docker-archive://{bad.empty}"], 1)
    fails_cleanly(user, ["import", f"docker-archive://{bad.private}"], 1)
    fails_cleanly(user, ["load", "-n", "x", f"oci-archive://{bad.private}"], 1)


def test_import_output_problems(user, bad):
    fails_cleanly(user, ["import", "-o", "/root/x.sqsh", CLOSED_PORT_URI], 1, "/root", env=HTTP)
    fails_cleanly(user, ["import", "-o", "/no/such/dir/x.sqsh", CLOSED_PORT_URI], 1, env=HTTP)
    fails_cleanly(user, ["import", "-o", str(bad.directory), CLOSED_PORT_URI], 1, env=HTTP)
    fails_cleanly(user, ["import", "-a", "no-such-arch", CLOSED_PORT_URI], 2, "architecture", env=HTTP)


# ------------------------------------------------------------------------------------ start options


def test_bad_start_options(user, box, bad):
    cases = [
        (["-m", "relative-target"], 1, "No such file"),  # a relative target is fine, the source must exist
        (["-m", ":"], 2, "invalid mount"),
        (["-m", ":::"], 2, "empty SRC, DST, TYPE, OPTIONS fields"),
        (["-m", "SRC:/d:none:bind:extra:more"], 2, "dump and pass must be numbers"),
        (["-m", ""], 2, "invalid mount"),
        (["-m", ":/d"], 2, "empty SRC field"),
        (["-m", "/tmp:/d:none:x-create=bogus"], 2, "x-create must be dir, file or auto"),
        (["-m", "/tmp:../escape"], 1, "Invalid cross-device link"),
        (["-m", f"{bad.base}/missing:/mnt"], 1, "No such file"),
        (["-e", "=value"], 2, "invalid environment variable"),
        (["-e", "1X=2"], 2, "invalid environment variable"),
        (["-e", ""], 2, "invalid environment variable"),
        (["--rc", f"{bad.base}/missing"], 2, "rc script"),
        (["--rc", str(bad.directory)], 2, "rc script"),
        (["--rc", str(bad.private)], 2, "cannot read rc script"),
        (["-c", f"{bad.base}/missing"], 1, "configuration script"),
        (["-c", str(bad.private)], 1, "configuration script"),
    ]
    for options, code, says in cases:
        # start writes into the container it starts (hosts, mount points): that is not a leftover
        fails_cleanly(user, ["start", *options, box, "true"], code, says, ignore=(".local/share/enroot/box",))
    no_mount_point = fails_cleanly(user, ["start", "-m", f"{bad.directory}:/no-such-dir:none:rbind", box, "true"], 1,
                                   "No such file", ignore=(".local/share/enroot/box",))
    assert "x-create=dir" in no_mount_point.stderr.splitlines()[1]
    assert os.listdir(data_dir(user)) == [box]


def test_mount_target_cannot_escape_the_root(user, box):
    source = user.make_dir("source")
    (source / "marker").write_text("inside\n")
    result = user.pyenroot("start", "-m", f"{source}:/../../../../tmp/pyenroot-escape", box,
                           "cat", "/tmp/pyenroot-escape/marker")
    assert result.returncode == 1 and "Invalid cross-device link" in result.stderr, result.stderr
    assert not Path("/tmp/pyenroot-escape").exists()


def test_bad_gpu_requests(user, box):
    for env, says in [({"NVIDIA_VISIBLE_DEVICES": "garbage"}, "NVIDIA_VISIBLE_DEVICES"),
                      ({"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "bogus"}, "bogus"),
                      ({"NVIDIA_VISIBLE_DEVICES": "0", "PYENROOT_NVIDIA_ROOT": "/root"}, "no NVIDIA driver")]:
        fails_cleanly(user, ["start", box, "true"], 1, says, env=env, ignore=(".local/share/enroot/box",))
    # a driver root the user may not search is no driver, not a crash
    doctor = user.pyenroot("doctor", "--gpu", env={"PYENROOT_NVIDIA_ROOT": "/root"})
    assert doctor.returncode == 1 and doctor.stderr == "", doctor.stderr
    assert "no NVIDIA driver" in doctor.stdout


def test_bad_batch_files(user, bad):
    fails_cleanly(user, ["batch", f"{bad.base}/missing"], 1, "cannot read batch file")
    fails_cleanly(user, ["batch", str(bad.directory)], 1, "directory")
    fails_cleanly(user, ["batch", str(bad.private)], 1, "cannot read batch file")
    fails_cleanly(user, ["batch", "/etc/passwd"], 1, "ENROOT_ROOTFS")
    # a syntax error is the problem to report, even when ENROOT_ROOTFS is missing too
    for name, text, says in [("unbalanced", "if true; then\n  echo x\nfi fi\n",
                              "line 3: syntax error near unexpected token `fi'"),
                             ("unfinished", "#ENROOT_ROOTFS=box\nif true; then\n",
                              "line 3: syntax error: unexpected end of file")]:
        script = user.home / name
        script.write_text(text)
        user.give(script)
        result = fails_cleanly(user, ["batch", str(script)], 1, f"invalid batch file {script}: {says}")
        assert "ENROOT_ROOTFS" not in result.stderr and "/etc/rc" not in result.stderr


# ------------------------------------------------------------------------------------ exec


def test_exec_bad_pids(user):
    own = subprocess.Popen(["sleep", "600"], user=user.uid, group=user.gid, extra_groups=[])
    root_owned = subprocess.Popen(["sleep", "600"])
    try:
        for pid, code, says in [("abc", 2, "invalid PID"), ("0", 2, "invalid PID"), ("-5", 2, "invalid PID"),
                                ("1x", 2, "invalid PID"), ("99999999999999999999", 1, "no such process"),
                                (str(own.pid), 1, "not in a container"),
                                (str(root_owned.pid), 1, "permission denied")]:
            fails_cleanly(user, ["exec", "--", pid, "true"], code, says)
    finally:
        for process in (own, root_owned):
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------ output locations


def test_export_to_bad_places(user, box, bad):
    locked = user.make_dir("locked")
    locked.chmod(0o555)
    fails_cleanly(user, ["export", "-o", str(locked / "x.sqsh"), box], 1, "Permission denied")
    fails_cleanly(user, ["export", "-o", "/root/x.sqsh", box], 1)
    fails_cleanly(user, ["export", "-o", "/no/such/dir/x.sqsh", box], 1, "no such directory")
    fails_cleanly(user, ["export", "-o", str(bad.directory), box], 1)
    fails_cleanly(user, ["export", "-f", "-o", str(bad.directory), box], 1, "directory")
    fails_cleanly(user, ["export", "-o", "x" * 300 + ".sqsh", box], 1, "cannot write")
    fails_cleanly(user, ["export", "-o", "x" * 300 + "/box.sqsh", box], 1, "cannot write")
    fails_cleanly(user, ["export", "-o", "", box], 2, "empty")
    assert os.listdir(locked) == []


def test_full_disk_create(user, busybox_sqsh, tiny_fs):
    data = tiny_fs / "data"
    result = fails_cleanly(user, ["create", "-n", "big", str(busybox_sqsh)], 1, "no space left on device",
                           env={"ENROOT_DATA_PATH": str(data)})
    assert result.stderr.splitlines()[1].startswith("hint: ")
    assert os.listdir(data) == []


def test_full_disk_export(user, box, tiny_fs):
    fails_cleanly(user, ["export", "-o", str(tiny_fs / "box.sqsh"), box], 1, "no space left on device")
    assert os.listdir(tiny_fs) == []


def test_full_disk_import_and_load(user, busybox_image, tiny_fs):
    out = tiny_fs / "out"
    out.mkdir()
    os.chown(out, user.uid, user.gid)
    fails_cleanly(user, ["import", "-o", str(out / "busybox.sqsh"), busybox_image.uri], 1, env=HTTP,
                  ignore=(".cache",))
    assert os.listdir(out) == []
    fails_cleanly(user, ["load", "-n", "big", busybox_image.uri], 1, ignore=(".cache",),
                  env={**HTTP, "ENROOT_DATA_PATH": str(tiny_fs / "data")})
    assert os.listdir(tiny_fs / "data") == []
    only_verified_blobs(user.home / ".cache")
    cache = tiny_fs / "cache"
    fails_cleanly(user, ["import", "-o", str(user.home / "tmp/busybox.sqsh"), busybox_image.uri], 1,
                  env={**HTTP, "ENROOT_CACHE_PATH": str(cache)}, ignore=("full/cache",))
    assert not list((user.home / "tmp").iterdir())
    only_verified_blobs(cache)


def test_unwritable_data_path_for_load(user, busybox_image):
    # (an unwritable ENROOT_CACHE_PATH is left out: content/blobs.py lets PermissionError through, reported)
    fails_cleanly(user, ["load", "-n", "box", busybox_image.uri], 1, "/root", ignore=(".cache",),
                  env={**HTTP, "ENROOT_DATA_PATH": "/root/pyenroot-data"})
    assert not Path("/root/pyenroot-data").exists()


# ------------------------------------------------------------------------------------ kills and SIGTERM


def test_kill_during_export_leaves_nothing(user, box):
    outdir = user.make_dir("out")
    with blocked_after(user, "mksquashfs", ["export", "-o", str(outdir / "box.sqsh"), box]) as process:
        assert not (outdir / "box.sqsh").exists()  # written, not yet renamed
        os.killpg(process.pid, signal.SIGKILL)
    assert [name for name in os.listdir(outdir) if not name.startswith(".")] == []

    rerun = user.pyenroot("export", "-o", str(outdir / "box.sqsh"), box)
    assert rerun.returncode == 0, rerun.stderr
    assert os.listdir(outdir) == ["box.sqsh"]  # the killed run's hidden temp files are gone too
    listing = subprocess.run(["unsquashfs", "-l", str(outdir / "box.sqsh")], capture_output=True, text=True)
    assert "squashfs-root/bin/busybox" in listing.stdout


def test_kill_during_load_leaves_nothing_visible(user, registry, pusher):
    big = [ib.Entry("big", "dir")] + [ib.Entry(f"big/{i}", data=os.urandom(1 << 20)) for i in range(16)]
    push(pusher, "test/bad-input-kill-load", "v1", [big, [ib.Entry("top", data=b"t")]])
    source = uri(registry, "test/bad-input-kill-load", "v1")
    process = subprocess.Popen([str(user.wrapper), "load", "-n", "victim", source], env=user.env(**HTTP),
                               user=user.uid, group=user.gid, extra_groups=[], cwd=str(user.home),
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()  # "[pyenroot] 2 layers, ...": fetched, now unpacking
        assert "layers" in line, line + process.stderr.read()
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    visible = [name for name in os.listdir(data_dir(user)) if not name.startswith(".")]
    assert visible in ([], ["victim"])  # complete or absent, never half
    if visible:
        assert (data_dir(user) / "victim/top").read_bytes() == b"t"

    rerun = user.pyenroot("load", "-f", "-n", "victim", source, env=HTTP)
    assert rerun.returncode == 0, rerun.stderr
    # the killed run's hidden work entry is gone too (an empty one from a kill right after its mkdir would
    # stay for an hour: storage cannot tell it from one being set up)
    assert [n for n in os.listdir(data_dir(user)) if not n.startswith(".pyenroot-new-")] == ["victim"]
    assert (data_dir(user) / "victim/top").read_bytes() == b"t"


def terminated(user, tool: str, args: list[str], extra_env: dict[str, str] | None = None) -> str:
    """SIGTERM pyenroot alone (as kill, timeout or Slurm would) once `tool` is done; returns its stderr."""
    with blocked_after(user, tool, args, extra_env) as process:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)  # a hang guard, not a timing assertion
        assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    return stderr


def test_sigterm_during_create_cleans_up(user, busybox_sqsh):
    terminated(user, "unsquashfs", ["create", "-n", "victim", str(busybox_sqsh)])
    assert os.listdir(data_dir(user)) == []  # not even a hidden work entry


def test_sigterm_during_export_cleans_up(user, box):
    outdir = user.make_dir("out")
    terminated(user, "mksquashfs", ["export", "-o", str(outdir / "box.sqsh"), box])
    assert os.listdir(outdir) == []


def test_sigterm_during_import_cleans_up(user, busybox_image):
    terminated(user, "tar2sqfs", ["import", "-o", str(user.home / "out.sqsh"), busybox_image.uri], HTTP)
    assert [p.name for p in user.home.iterdir() if "out" in p.name] == []
    assert list((user.home / "tmp").iterdir()) == []
    only_verified_blobs(user.home / ".cache")


@pytest.mark.parametrize("mode", [0o500, 0o000], ids=["read-only", "unreadable"])
def test_unusable_cache_path(user, busybox_image, mode):
    cache = user.make_dir("unusable-cache")
    cache.chmod(mode)
    try:
        fails_cleanly(user, ["import", "-o", "out.sqsh", busybox_image.uri], 1, "cache directory",
                      env={**HTTP, "ENROOT_CACHE_PATH": str(cache / "enroot")})
    finally:
        cache.chmod(0o755)


# ------------------------------------------------------------------------------------ importer robustness


def test_archive_paths_that_are_not_archives(user, bad):
    fails_cleanly(user, ["import", f"docker-archive://{bad.text}"], 1, f"not a tar archive: {bad.text}")
    fails_cleanly(user, ["import", f"oci-archive://{bad.directory}"], 1, f"is a directory: {bad.directory}")
    fails_cleanly(user, ["import", f"docker-archive://{bad.private}"], 1, f"permission denied: {bad.private}")
    # a device would be read forever: refused before reading
    fails_cleanly(user, ["load", "-n", "x", "docker-archive:///dev/zero"], 1, "not a regular file: /dev/zero")


def test_empty_output_or_name_is_a_usage_error(user):
    fails_cleanly(user, ["import", "-o", "", CLOSED_PORT_URI], 2, "the name is empty", env=HTTP)
    fails_cleanly(user, ["load", "-n", "", CLOSED_PORT_URI], 2, "the name is empty", env=HTTP)


def test_full_disk_import_names_the_output(user, busybox_image, tiny_fs):
    out = user.make_dir("full/out") / "busybox.sqsh"
    result = fails_cleanly(user, ["import", "-o", str(out), busybox_image.uri], 1,
                           f"no space left on device writing {out}", env=HTTP, ignore=(".cache",))
    assert result.stderr.splitlines()[-1].startswith("hint: ")
    assert os.listdir(out.parent) == []


def _scratch_dirs(user) -> list[str]:
    return [name for name in os.listdir(user.home / "tmp") if name.startswith("pyenroot-import-")]


def test_kill_during_import_scratch_is_removed_by_the_next(user, busybox_image):
    with blocked_after(user, "tar2sqfs", ["import", "-o", str(user.home / "a.sqsh"), busybox_image.uri], HTTP) \
            as process:
        os.killpg(process.pid, signal.SIGKILL)
    assert _scratch_dirs(user)  # what a killed import leaves
    rerun = user.pyenroot("import", "-o", str(user.home / "b.sqsh"), busybox_image.uri, env=HTTP)
    assert rerun.returncode == 0, rerun.stderr
    assert _scratch_dirs(user) == []


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat_line = Path(f"/proc/{entry}/stat").read_text()
                if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_tar2sqfs_dies_with_a_killed_import(user, busybox_image):
    with blocked_after(user, "tar2sqfs", ["import", "-o", str(user.home / "a.sqsh"), busybox_image.uri], HTTP) \
            as process:
        tools = _children(process.pid)
        assert tools
        os.kill(process.pid, signal.SIGKILL)  # pyenroot alone, as the OOM killer would
        process.wait()
        for _ in range(6000):  # a generous bound, not a timing assertion
            if not any(map(_alive, tools)):
                break
            time.sleep(0.05)
        assert not any(map(_alive, tools)), "tar2sqfs outlived pyenroot"
