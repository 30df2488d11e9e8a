"""Container names, paths, work-entry clean-up, export excludes and /proc parsing of pyenroot/containers/."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from pyenroot.commands import list as list_command
from pyenroot.config import Settings
from pyenroot.containers import discovery, export, names, tree, work
from pyenroot.errors import StorageError, UsageError
from pyenroot.names import validate_name


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings({"ENROOT_DATA_PATH": str(tmp_path / "data"), "ENROOT_SQUASH_OPTIONS": "-comp lz4"})


@pytest.mark.parametrize("name", ["busybox", "pyxis_1234_step", "nvidia+pytorch+24.01", "a", "A-b.c_d+e", "9lives",
                                  "x" * 128, "ubuntu+sha256:0123abcd"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "/", "a/b", "../x", ".", "..", ".hidden", "-rf", "x" * 129, "a b", "tab\t",
                                  "new\nline", "ünïcode", ":a", "a*", "$HOME", "~user"])
def test_invalid_names(name):
    with pytest.raises(UsageError) as caught:
        validate_name(name)
    assert "\n" not in caught.value.message  # one line, whatever the name holds


def test_default_name():
    assert names.default_name(Path("/x/nvidia+pytorch+24.01.sqsh")) == "nvidia+pytorch+24.01"
    assert names.default_name(Path("image")) == "image"
    assert names.default_name(Path("a.sqsh.sqsh")) == "a.sqsh"


def test_container_dir_is_a_direct_child(settings, tmp_path):
    assert names.container_dir(settings, "web") == tmp_path / "data" / "web"
    for bad in ("..", "../data2", "a/../../b", ""):
        with pytest.raises(UsageError):
            names.container_dir(settings, bad)


def test_container_names_skip_hidden_and_files(settings, tmp_path):
    data = names.data_path(settings)
    assert oct(data.stat().st_mode & 0o777) == oct(0o700)
    (data / "one").mkdir()
    (data / "two").mkdir()
    (data / f"{work.WORK_PREFIX}123-abcd").mkdir()
    (data / "file").write_text("")
    (data / "link").symlink_to(data / "one")
    assert names.container_names(settings) == ["one", "two"]


def test_existing_container_rejects_symlinks(settings, tmp_path):
    data = names.data_path(settings)
    (tmp_path / "elsewhere").mkdir()
    (data / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StorageError, match="no such container: link"):
        names.existing_container(settings, "link")


def test_remove_tree_without_write_bits(tmp_path):
    top = tmp_path / "tree"
    (top / "a/b").mkdir(parents=True)
    (top / "a/b/file").write_text("x")
    (top / "a/link").symlink_to(tmp_path)  # must not be followed
    (top / "a/b").chmod(0o500)
    (top / "a").chmod(0o000)
    tree.remove_tree(top)
    assert not top.exists()
    assert tmp_path.exists()


def test_clean_stale_work_keeps_locked_entries(tmp_path):
    stale = tmp_path / f"{work.WORK_PREFIX}1-dead"
    busy = tmp_path / f"{work.WORK_PREFIX}2-busy"
    for path in (stale, busy):
        (path / "rootfs/etc").mkdir(parents=True)
    (tmp_path / "container").mkdir()
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert work.clean_stale_work(tmp_path) == [stale.name]
    finally:
        os.close(fd)
    assert busy.exists() and not stale.exists() and (tmp_path / "container").exists()


def test_export_excludes(tmp_path):
    root = tmp_path / "root"
    for sub in ("dev/pts", "etc", "mnt/data", "opt/full"):
        (root / sub).mkdir(parents=True)
    (root / "dev/null").write_text("")
    (root / ".lock").write_text("")
    (root / "etc/hosts").write_text("")
    (root / "mnt/data").chmod(0)  # x-create=dir mount point
    (root / "etc/hosts").chmod(0)  # x-create=file mount point
    (root / "opt/full/f").write_text("data")
    (root / "opt/full/f").chmod(0)  # mode 0000 but not empty: real content, kept
    assert export.export_excludes(root) == [".lock", "dev/null", "dev/pts", "etc/hosts", "mnt/data"]


def test_squash_options(settings):
    assert export.squash_options(settings) == ["-comp", "lz4"]
    quoted = settings.overridden(ENROOT_SQUASH_OPTIONS="-comp zstd -Xcompression-level '3'")
    assert export.squash_options(quoted) == ["-comp", "zstd", "-Xcompression-level", "3"]
    with pytest.raises(UsageError):
        export.squash_options(settings.overridden(ENROOT_SQUASH_OPTIONS="-comp 'lz4"))


HOST_MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /proc rw shared:2 - proc proc rw
40 22 8:17 /export/users /home rw shared:3 - ext4 /dev/sdb1 rw
"""


def test_data_location_follows_bind_mounts():
    entries = discovery.parse_mountinfo(HOST_MOUNTINFO)
    location = discovery.data_location(entries, "/home/alice/.local/share/enroot")
    assert (location.device, location.root) == ("8:17", "/export/users/alice/.local/share/enroot")
    location = discovery.data_location(entries, "/var/lib/enroot")
    assert (location.device, location.root) == ("8:1", "/var/lib/enroot")


def test_container_name_from_root_mount():
    data = discovery.data_location(discovery.parse_mountinfo(HOST_MOUNTINFO), "/home/alice/.local/share/enroot")
    container = discovery.parse_mountinfo(
        "100 99 8:17 /export/users/alice/.local/share/enroot/my\\040box / ro,nosuid - ext4 /dev/sdb1 rw\n"
        "101 100 8:17 /export/users/alice/.local/share/enroot/pyxis_12_x / ro,nosuid - ext4 /dev/sdb1 rw\n"
        "102 101 0:30 / /proc rw - proc proc rw\n")
    root = discovery.root_mount(container)
    assert root.root.endswith("/pyxis_12_x")  # the last mount on / is the visible one
    assert discovery.container_name_of(root, data) == "pyxis_12_x"
    assert discovery.container_name_of(container[0], data) is None  # "my box" is no valid name
    other_device = discovery.MountEntry("8:1", root.root, "/")
    assert discovery.container_name_of(other_device, data) is None
    nested = discovery.MountEntry("8:17", root.root + "/usr", "/")
    assert discovery.container_name_of(nested, data) is None


def test_parse_stat_with_odd_command_names():
    text = "4242 (we ird) name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 100"
    assert discovery.parse_stat(text) == ("S", 98765)


def test_list_table_and_times():
    process = discovery.ContainerProcess("web", 42, "S", 1000.0, 4026531840, 4026531837, "sleep 100")
    lines = list_command.rows(["db", "web"], [process], now=1000.0 + 3 * 86400 + 3725)
    assert lines[0] == ("db", "", "", "", "", "", "", "")
    assert lines[1][:3] == ("web", "42", "S") and lines[1][4] == "3-01:02:05"
    text = list_command.table(lines).splitlines()
    assert text[0].split() == list(list_command.COLUMNS)
    assert text[1].rstrip() == "db"
    assert list_command.format_elapsed(59) == "00:59"
    unknown = discovery.ContainerProcess(discovery.UNKNOWN_NAME, 7, "S", 0.0, 1, 2, "sh")
    data = list_command.as_json(["web"], [process, unknown], "/d")
    assert data[0]["path"] == "/d/web" and data[0]["processes"][0]["pid"] == 42
    assert data[1]["name"] is None and data[1]["processes"][0]["pid"] == 7


def test_list_elides_the_middle_of_long_names():
    digest_name = "registry+test+app@sha256+" + "ab12" * 16  # 89 characters, as `import` names a digest
    assert list_command.elide("short", 40) == "short"
    elided = list_command.elide(digest_name, 40)
    assert len(elided) == 40 and elided.startswith("registry+test+app@") and elided.endswith("ab12ab12")
    assert "..." in elided
    lines = [(digest_name, "", "", "", "", "", "", ""), ("db", "7", "S", "", "", "", "", "sleep 1")]
    capped = list_command.table(lines, 40).splitlines()
    assert capped[1] == elided and capped[2].startswith("db" + " " * 40 + "7")
    assert list_command.table(lines).splitlines()[1] == digest_name
