"""`pyenroot bundle` and the bundles it makes, as the unprivileged user.

Each bundle is copied to a fresh directory and run there with PATH=/usr/bin:/bin: no virtualenv, no pyenroot,
the system's /usr/bin/python3 (Python 3.11) and the squashfs tools; what runs is the pyenroot inside the bundle.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from tests.integration.test_bad_input import bad, check_error, fails_cleanly, snapshot  # noqa: F401 (bad: fixture)

CLEAN_PATH = "/usr/bin:/bin"


def make(user, image: Path, *options: str, env: dict[str, str] | None = None) -> Path:
    """Make a bundle in the user's home and move it to a fresh directory, away from the image."""
    result = user.pyenroot("bundle", "-o", str(user.home / "box.run"), *options, str(image), env=env)
    assert result.returncode == 0, result.stderr
    elsewhere = user.make_dir("elsewhere")
    moved = elsewhere / "box.run"
    shutil.move(user.home / "box.run", moved)
    return moved


def run(user, bundle: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a bundle in its own directory, with a PATH that has neither a virtualenv nor pyenroot."""
    return user.run([str(bundle), *args], cwd=bundle.parent, env={"PATH": CLEAN_PATH, **(env or {})})


def leftovers(user) -> list[str]:
    """What a run may leave in TMPDIR: the runtime directory, a work entry with the unpacked image."""
    return sorted(name for name in os.listdir(user.home / "tmp") if "pyenroot" in name)


def test_bundle_runs_its_command_without_pyenroot_installed(user, busybox_sqsh):
    bundle = make(user, busybox_sqsh, "-d", "busybox for tests")
    assert os.access(bundle, os.X_OK)

    result = run(user, bundle, "sh", "-c", "cat /etc/os-release; echo args: \"$@\"; exit 7", "sh", "one", "two")
    assert result.returncode == 7, result.stderr  # the command's own exit status
    assert "busybox" in result.stdout.lower()
    assert "args: one two" in result.stdout
    assert leftovers(user) == []  # the runtime and the unpacked image are gone
    assert os.listdir(bundle.parent) == ["box.run"]  # without --keep nothing is unpacked next to it

    killed = run(user, bundle, "sh", "-c", "kill -TERM $$")
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr


def test_bundle_is_read_only_unless_rw_and_keep_keeps_the_target(user, busybox_sqsh):
    bundle = make(user, busybox_sqsh, "-t", "kept-root")
    target = bundle.parent / "kept-root"

    read_only = run(user, bundle, "sh", "-c", "echo x > /etc/written")
    assert read_only.returncode != 0
    assert "Read-only file system" in read_only.stderr

    written = run(user, bundle, "--rw", "--keep", "sh", "-c", "echo inside > /etc/written")
    assert written.returncode == 0, written.stderr
    assert (target / "etc/written").read_text() == "inside\n"
    assert (target / "bin/busybox").is_file()
    assert target.stat().st_uid == user.uid
    assert [n for n in os.listdir(bundle.parent) if n.startswith(".")] == []  # no work entry left

    again = run(user, bundle, "--keep", "true")
    check_error(again, 1, "target directory already exists")
    assert (target / "etc/written").read_text() == "inside\n"  # untouched

    shutil.rmtree(target)
    extracted = run(user, bundle, "--extract")
    assert extracted.returncode == 0, extracted.stderr
    assert (target / "bin/busybox").is_file() and not (target / "etc/written").exists()
    assert leftovers(user) == []


def test_bundle_mounts_and_environment(user, busybox_sqsh):
    bundle = make(user, busybox_sqsh)
    shared = user.make_dir("shared")
    (shared / "data.txt").write_text("from the host\n")

    result = run(user, bundle, "--mount", f"{shared}:/mnt/shared", "-e", "FROM_HOST", "-e", "GIVEN=2",
                 "sh", "-c", "cat /mnt/shared/data.txt; echo \"$FROM_HOST $GIVEN\"",
                 env={"FROM_HOST": "yes"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["from the host", "yes 2"]

    root = run(user, bundle, "--root", "id", "-u")
    assert (root.returncode, root.stdout) == (0, "0\n"), root.stderr


def long_options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))


def test_bundle_info_and_verify(user, busybox_sqsh):
    bundle = make(user, busybox_sqsh, "-d", "a described box", "-t", "somewhere")

    info = run(user, bundle, "--info")
    assert info.returncode == 0, info.stderr
    assert "a described box" in info.stdout
    assert "somewhere" in info.stdout
    assert "busybox.sqsh" in info.stdout and "lz4" in info.stdout
    assert "Checksum:      none" in info.stdout

    verify = run(user, bundle, "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "/usr/bin/python3 3.11" in verify.stdout
    assert "user namespaces  ok" in verify.stdout
    assert "unsquashfs" in verify.stdout
    assert leftovers(user) == []

    helped = run(user, bundle, "--help")
    assert helped.returncode == 0 and "--keep" in helped.stdout and "--mount" in helped.stdout
    # `pyenroot bundle --help` names exactly the options a bundle takes
    described = user.pyenroot("bundle", "--help").stdout.split("Its options:", 1)[1]
    assert long_options(described) - {"--help"} == long_options(helped.stdout) - {"--help"}
    check_error(run(user, bundle, "--no-such-option"), 2, "unrecognized arguments")


def test_bundle_checksum_catches_damage(user, busybox_sqsh):
    bundle = make(user, busybox_sqsh, "-c")
    assert "SHA-256" in run(user, bundle, "--info").stdout
    ok = run(user, bundle, "sh", "-c", "echo fine")
    assert ok.returncode == 0 and ok.stdout == "fine\n", ok.stderr

    data = bytearray(bundle.read_bytes())
    data[-5000] ^= 0xFF  # inside the image, near the end of the archive
    bundle.write_bytes(bytes(data))
    damaged = run(user, bundle, "true")
    check_error(damaged, 1, "checksum mismatch")
    assert leftovers(user) == []


def test_bundle_all_carries_the_user_configuration(user, busybox_sqsh):
    environ_d = user.make_dir(".config/enroot/environ.d")
    (environ_d / "50-bundled.env").write_text("FROM_CONFIG=carried\n")
    (user.home / ".config/enroot/.credentials").write_text("machine example login me password secret\n")
    user.give(user.home / ".config")
    probe = ["sh", "-c", "echo \"config=$FROM_CONFIG\"; touch /etc/probe && echo writable"]

    plain = run(user, make(user, busybox_sqsh), *probe)
    assert "config=\n" in plain.stdout and "writable" not in plain.stdout

    (user.home / "elsewhere/box.run").unlink()
    # ENROOT_ROOTFS_WRITABLE is one of the settings that --all records
    bundle = make(user, busybox_sqsh, "--all", env={"ENROOT_ROOTFS_WRITABLE": "y"})
    carried = run(user, bundle, *probe)
    assert carried.returncode == 0, carried.stderr
    assert "config=carried" in carried.stdout and "writable" in carried.stdout
    data = bundle.read_bytes()
    skip = int(re.search(rb"^skip=(\d+)$", data, re.MULTILINE)[1])  # the header's length in lines
    listing = subprocess.run(["tar", "-tf", "-"], input=data.split(b"\n", skip)[-1], capture_output=True).stdout
    listing = listing.decode()
    assert "50-bundled.env" in listing and ".credentials" not in listing


def test_bundle_bad_input(user, busybox_sqsh, bad):  # noqa: F811 (the fixture)
    fails_cleanly(user, ["bundle", str(user.home / "missing.sqsh")], 1, "no such image file")
    fails_cleanly(user, ["bundle", str(bad.text)], 1, "not a squashfs image")
    fails_cleanly(user, ["bundle", str(bad.directory)], 1, "not a squashfs image")
    fails_cleanly(user, ["bundle", "-o", str(user.home / "no/such/dir/x.run"), str(busybox_sqsh)], 1,
                  "no such directory")
    fails_cleanly(user, ["bundle", "-o", "", str(busybox_sqsh)], 2, "empty")

    existing = user.home / "busybox.run"  # the default output name, in the working directory
    existing.write_text("keep me\n")
    user.give(existing)
    fails_cleanly(user, ["bundle", str(busybox_sqsh)], 1, "file already exists")
    assert existing.read_text() == "keep me\n"
    forced = user.pyenroot("bundle", str(busybox_sqsh), env={"ENROOT_FORCE_OVERRIDE": "y"})
    assert forced.returncode == 0, forced.stderr
    assert existing.read_bytes().startswith(b"#!/bin/sh\n")


def fake_makeself(user, body: str) -> dict[str, str]:
    """A `makeself` first on PATH that writes half an output file (its 3rd-last argument), then does `body`."""
    tools = user.make_dir("fake-tools")
    script = tools / "makeself"
    script.write_text("#!/bin/sh\n"
                      "eval out=\\${$(($# - 2))}\n"
                      "echo half a bundle > \"$out\"\n"
                      f"{body}\n")
    script.chmod(0o755)
    user.give(script)
    return {"PATH": f"{tools}:{user.env()['PATH']}"}


def test_bundle_failure_or_kill_leaves_no_half_written_file(user, busybox_sqsh):
    out = user.home / "box.run"
    failing = fake_makeself(user, "echo 'makeself: cannot write the archive' >&2; exit 1")
    result = fails_cleanly(user, ["bundle", "-o", str(out), str(busybox_sqsh)], 1, "makeself failed", env=failing)
    assert "cannot write the archive" in result.stderr

    # SIGTERM: pyenroot stops makeself and removes what it wrote
    terminated = fake_makeself(user, "kill -TERM $PPID; exec sleep 60")
    before = snapshot(user.home)
    result = user.pyenroot("bundle", "-o", str(out), str(busybox_sqsh), env=terminated)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert snapshot(user.home) == before

    # SIGKILL: hidden leftovers only, which the next bundle removes
    killed = fake_makeself(user, "kill -KILL $PPID; exec sleep 1")
    result = user.pyenroot("bundle", "-o", str(out), str(busybox_sqsh), env=killed)
    assert result.returncode == -signal.SIGKILL
    assert not out.exists()
    made = user.pyenroot("bundle", "-o", str(out), str(busybox_sqsh))
    assert made.returncode == 0, made.stderr
    assert snapshot(user.home) == before | {"box.run"}


def test_bundle_names_a_missing_unpacker(user, busybox_sqsh):
    bundle = make(user, busybox_sqsh)
    bin_dir = user.make_dir("bin-without-squashfs-tools")
    for tool in ("sh", "python3", "tar", "head", "tail", "wc", "tr", "mktemp", "rm", "cut"):
        os.symlink(shutil.which(tool, path=CLEAN_PATH), bin_dir / tool)
    result = run(user, bundle, "true", env={"PATH": str(bin_dir)})
    check_error(result, 1, "unsquashfs is not installed")
    assert leftovers(user) == []
