"""What a `.sqsh` start does ahead: the later stages' host-side work while squashfuse mounts the image, and the
programs it will execute read while it configures the container. Checked without a kernel: the order around
the FUSE server, what the hooks' preparation loads and keeps, which programs are read and that the reading
stays inside the root."""

import os
import sys
import types

import pytest

from pyenroot.runtime import builtin_hooks, hooks, imagemount
from pyenroot.runtime.hookapi import HookContext
from pyenroot.runtime.hooks import HookStep


def test_the_callers_work_runs_after_the_server_starts_and_before_the_mount_is_awaited(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(imagemount.tools, "start_server", lambda argv, **_: events.append("server") or 4242)
    monkeypatch.setattr(imagemount, "_wait_mounted", lambda *args: events.append("wait"))
    imagemount._spawn_fuse(["squashfuse_ll", "-f", "image", str(tmp_path)], tmp_path, as_root=False,
                           meanwhile=lambda: events.append("meanwhile"))
    assert events == ["server", "meanwhile", "wait"]


def _module(name, calls, *, fails=None):
    module = types.ModuleType(name)

    def prepare(uid, gid):
        calls.append((name, uid, gid))
        if fails:
            raise fails

    module.prepare = prepare
    module.run = lambda ctx: None
    return module


def test_prepare_loads_each_unguarded_builtin_once_and_runs_its_preparation(monkeypatch):
    calls = []
    for name, fails in (("fake_accounts", None), ("fake_broken", OSError("no /proc")), ("fake_gpu", None)):
        monkeypatch.setitem(sys.modules, name, _module(name, calls, fails=fails))
    steps = [HookStep("10-shadow", target="fake_accounts:run"), HookStep("10-home", target="fake_accounts:run"),
             HookStep("10-broken", target="fake_broken:run"), HookStep("98-nvidia", target="fake_gpu:run"),
             HookStep("20-missing", target="fake_not_installed:run"), HookStep("50-site.sh", path=None)]
    hooks.prepare(steps, 1001, 1002)
    # A guarded step (98-nvidia) may do nothing at all; a failure or a missing module is left to the step.
    assert sorted(calls) == [("fake_accounts", 1001, 1002), ("fake_broken", 1001, 1002)]


@pytest.fixture
def fresh_lookups():
    for cached in (builtin_hooks._account, builtin_hooks._group_name, builtin_hooks._cgroup_mounts):
        cached.cache_clear()
    yield
    for cached in (builtin_hooks._account, builtin_hooks._group_name, builtin_hooks._cgroup_mounts):
        cached.cache_clear()


def test_the_hooks_use_the_accounts_looked_up_ahead(monkeypatch, tmp_path, fresh_lookups):
    entry = types.SimpleNamespace(pw_name="me", pw_gecos="Me: Myself", pw_dir="/home/me", pw_shell="/bin/bash")
    monkeypatch.setattr(builtin_hooks.pwd, "getpwuid", lambda uid: entry)
    monkeypatch.setattr(builtin_hooks.grp, "getgrgid", lambda gid: types.SimpleNamespace(gr_name="us"))
    builtin_hooks.prepare(1001, 1002)

    def no_directory(_):
        raise AssertionError("looked up again")

    monkeypatch.setattr(builtin_hooks.pwd, "getpwuid", no_directory)
    monkeypatch.setattr(builtin_hooks.grp, "getgrgid", no_directory)
    ctx = HookContext(rootfs=tmp_path, environ={}, host_environ={}, outer_uid=1001, outer_gid=1002,
                      remap_root=False, pid=1, mount_now=lambda line: None)
    assert builtin_hooks._host_identity(ctx) == ("me", "Me  Myself", "/home/me", "/bin/bash")
    assert builtin_hooks._group_name(1002) == "us"


def test_an_unknown_caller_still_gets_a_name(monkeypatch, tmp_path, fresh_lookups):
    def unknown(_):
        raise KeyError("not in the directory")

    monkeypatch.setattr(builtin_hooks.pwd, "getpwuid", unknown)
    monkeypatch.setattr(builtin_hooks.grp, "getgrgid", unknown)
    ctx = HookContext(rootfs=tmp_path, environ={}, host_environ={"HOME": "/h"}, outer_uid=1001, outer_gid=1002,
                      remap_root=False, pid=1, mount_now=lambda line: None)
    assert builtin_hooks._host_identity(ctx) == ("user1001", "", "/h", "/bin/sh")
    assert builtin_hooks._group_name(1002) == "group1002"


# ------------------------------------------------------------------ reading the programs ahead

def test_the_programs_a_start_runs_first_are_guessed_in_order():
    from pyenroot.runtime.environ import default_path
    from pyenroot.runtime.plan import programs_to_read_ahead

    # The init shell first: it runs an image's init script (most images have one), then the command.
    assert programs_to_read_ahead(["true"], "/bin/sh", "/opt/bin:relative:/bin/") == [
        ("/bin/sh",), ("/opt/bin/true", "/bin/true")]
    assert programs_to_read_ahead(["/usr/bin/python3", "-c", "1"], "/bin/bash", "/bin") == [
        ("/bin/bash",), ("/usr/bin/python3",)]
    assert programs_to_read_ahead(["./run.sh"], "/bin/sh", "/bin") == [("/bin/sh",)]  # not guessed
    assert programs_to_read_ahead([], "/bin/sh", "/bin") == [("/bin/sh",)]  # an interactive shell
    assert programs_to_read_ahead(["echo a b"], "/bin/sh", "/bin") == [("/bin/sh",)]  # a line for the shell
    assert programs_to_read_ahead(["/bin/sh", "-c", "x"], "/bin/sh", "/bin") == [("/bin/sh",)]
    # Without a PATH of its own, a container gets the default one for its user.
    assert "/usr/sbin" in default_path(True).split(":") and "/usr/sbin" not in default_path(False).split(":")


def _open_descriptors():
    return len(os.listdir("/proc/self/fd"))


def test_read_ahead_reads_what_the_root_has_and_lets_its_descriptors_go(tmp_path):
    from pyenroot.runtime import readahead

    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(os.urandom(3 * readahead.CHUNK + 5))
    (root / "bin" / "sh").symlink_to("busybox")
    before = _open_descriptors()
    # /bin/sh and /bin/busybox are one file, read once; the other descriptor is closed at once.
    done = readahead.read_ahead(root, [("/usr/bin/sh", "/bin/sh"), ("/bin/none",), ("/bin/busybox",)])
    assert done is not None
    assert done.acquire(timeout=30)
    assert _open_descriptors() == before
    assert readahead.read_ahead(root, [("/bin/none",)]) is None


def test_read_ahead_opens_no_file_outside_the_root_and_nothing_but_files(tmp_path):
    """An image's links cannot lead the reading out of its root, and a link loop is only skipped."""
    from pyenroot.runtime import readahead

    outside = tmp_path / "host-secret"
    outside.write_text("host file\n")
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "absolute").symlink_to(outside)
    (root / "bin" / "climbing").symlink_to("../../host-secret")
    os.mkfifo(root / "bin" / "fifo")
    (root / "bin" / "directory").mkdir()
    (root / "bin" / "loop").symlink_to("loop")
    for name in ("absolute", "climbing", "fifo", "directory", "loop"):
        assert readahead._open_program(root, (f"/bin/{name}",)) is None, name
