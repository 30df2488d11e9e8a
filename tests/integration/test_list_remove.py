"""`pyenroot list` and `pyenroot remove`, as the unprivileged user."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.integration.test_exec import running_container


def create(user, image, name):
    result = user.pyenroot("create", "-n", name, str(image))
    assert result.returncode == 0, result.stderr


def data_dir(user):
    return user.home / ".local/share/enroot"


def own_entries(user, *options: str) -> list[dict]:
    """`list --json` without the `<unknown>` containers: other tests run containers as the same user."""
    result = user.pyenroot("list", "--json", *options)
    assert result.returncode == 0, result.stderr
    return [e for e in json.loads(result.stdout) if e["name"] is not None]


def test_list_plain_and_json(user, busybox_sqsh):
    empty = user.pyenroot("list")
    assert empty.returncode == 0 and empty.stdout == ""
    assert own_entries(user) == []
    for name in ("zeta", "alpha", "pyxis_7_step"):
        create(user, busybox_sqsh, name)
    assert user.pyenroot("list").stdout.splitlines() == ["alpha", "pyxis_7_step", "zeta"]
    entries = own_entries(user)
    assert [e["name"] for e in entries] == ["alpha", "pyxis_7_step", "zeta"]
    assert entries[0]["path"] == str(data_dir(user) / "alpha")
    assert all(e["processes"] == [] for e in entries)


def test_list_fancy_shows_running_container(user, busybox_sqsh):
    create(user, busybox_sqsh, "idle")
    create(user, busybox_sqsh, "busy")
    with running_container(user, "busy") as pid:
        fancy = user.pyenroot("list", "--fancy")
        assert fancy.returncode == 0, fancy.stderr
        lines = fancy.stdout.splitlines()
        assert lines[0].split() == ["NAME", "PID", "STATE", "STARTED", "TIME", "MNTNS", "USERNS", "COMMAND"]
        busy = lines[1].split()
        assert busy[:3] == ["busy", str(pid), "S"]
        assert busy[5] == os.readlink(f"/proc/{pid}/ns/mnt").strip("mnt:[]")
        assert busy[6] == os.readlink(f"/proc/{pid}/ns/user").strip("user:[]")
        assert busy[7:] == ["sleep", "3600"]
        assert lines[2].split() == ["idle"]
        entries = {e["name"]: e for e in own_entries(user, "-f")}
        assert [p["pid"] for p in entries["busy"]["processes"]] == [pid]
        assert entries["idle"]["processes"] == []


def test_remove_refuses_running_container_unless_forced(user, busybox_sqsh):
    create(user, busybox_sqsh, "busy")
    with running_container(user, "busy") as pid:
        refused = user.pyenroot("remove", "busy")
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"pyenroot: error: container busy is running (PID {pid})")
        assert (data_dir(user) / "busy/bin/busybox").exists()
        forced = user.pyenroot("remove", "-f", "busy")
        assert forced.returncode == 0, forced.stderr
        assert "pyenroot: stopped 1 process of container busy" in forced.stderr
        assert not alive(pid)  # removed means gone: nothing keeps running in the deleted root
        assert user.pyenroot("list").stdout == ""
    assert os.listdir(data_dir(user)) == []


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie that its parent has not reaped yet does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_remove_several_and_errors(user, busybox_sqsh):
    for name in ("one", "two", "three"):
        create(user, busybox_sqsh, name)
    missing = user.pyenroot("remove", "one", "nosuch")
    assert missing.returncode == 1 and "no such container: nosuch" in missing.stderr
    assert user.pyenroot("list").stdout.split() == ["one", "three", "two"]  # nothing removed
    bad = user.pyenroot("remove", "..")
    assert bad.returncode == 2 and "invalid container name" in bad.stderr
    assert data_dir(user).exists()
    result = user.pyenroot("remove", "one", "two", "one")
    assert result.returncode == 0, result.stderr
    assert user.pyenroot("list").stdout.split() == ["three"]


def test_remove_without_write_bits(user, busybox_sqsh):
    create(user, busybox_sqsh, "readonly")
    root = data_dir(user) / "readonly"
    user.run(["mkdir", "-p", str(root / "deep/er")], check=True)
    user.run(["touch", str(root / "deep/er/file")], check=True)
    user.run(["chmod", "-R", "a-w", str(root)], check=True)
    user.run(["chmod", "0", str(root / "deep")], check=True)
    result = user.pyenroot("remove", "readonly")
    assert result.returncode == 0, result.stderr
    assert not root.exists()


def _on_a_terminal(user, command: str, answer: str) -> subprocess.CompletedProcess:
    """Run a pyenroot command line with its stdin on a pseudo-terminal, typing `answer`."""
    return user.run(["script", "-qec", command, "/dev/null"], input=answer)


def test_list_fancy_elides_long_names_on_a_terminal_only(user, busybox_sqsh):
    long_name = "registry+test+app@sha256+" + "0123456789abcdef" * 4  # as long as a name made from a digest
    create(user, busybox_sqsh, long_name)
    piped = user.pyenroot("list", "-f")
    assert piped.returncode == 0 and piped.stdout.splitlines()[1] == long_name
    on_tty = _on_a_terminal(user, f"{user.wrapper} list -f", "")
    assert on_tty.returncode == 0, on_tty.stdout
    row = on_tty.stdout.splitlines()[1].rstrip()
    assert len(row) == 40 and row.startswith("registry+test+app@") and "..." in row and row.endswith("cdef")
    full = _on_a_terminal(user, f"{user.wrapper} list -f --no-trunc", "")
    assert full.stdout.splitlines()[1].rstrip() == long_name


def test_remove_asks_on_a_terminal(user, busybox_sqsh):
    create(user, busybox_sqsh, "asked")
    kept = _on_a_terminal(user, f"{user.wrapper} remove asked", "n\n")
    assert kept.returncode == 0, kept.stdout
    assert "Do you really want to delete" in kept.stdout and "[y/N]" in kept.stdout
    assert user.pyenroot("list").stdout.split() == ["asked"]
    removed = _on_a_terminal(user, f"{user.wrapper} remove asked", "y\n")
    assert removed.returncode == 0, removed.stdout
    assert user.pyenroot("list").stdout == ""


def test_list_shows_container_started_from_image(user, busybox_sqsh):
    argv = [str(user.wrapper), "start", str(busybox_sqsh), "sh", "-c", "echo ready; exec sleep 3607"]
    process = subprocess.Popen(argv, env=user.env(), user=user.uid, group=user.gid, extra_groups=[],
                               cwd=str(user.home), start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
        result = user.pyenroot("list", "--fancy", "--json")
        unknown = [p for e in json.loads(result.stdout) if e["name"] is None for p in e["processes"]]
        assert "sleep 3607" in [p["command"] for p in unknown]
        fancy = [line.split() for line in user.pyenroot("list", "-f").stdout.splitlines()]
        assert ["<unknown>", "sleep", "3607"] in [[row[0], *row[7:]] for row in fancy]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
