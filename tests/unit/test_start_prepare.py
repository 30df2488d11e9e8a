"""What a `.sqsh` start does while squashfuse mounts the image: the later stages' host-side work, ahead.
Checked without a kernel: the order around the FUSE server, and what the hooks' preparation loads and keeps."""

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
