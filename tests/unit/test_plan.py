"""Start plans computed without a kernel: namespaces, maps, mount order, environment, init script, argv."""

import pytest

from pyenroot.errors import ConfigError
from pyenroot.runtime import flags, fstab, plan
from pyenroot.runtime.plan import ImageFacts, StartRequest, build_plan


def request(**changes) -> StartRequest:
    base = dict(outer_uid=1001, outer_gid=1002, host_environ={"TERM": "xterm", "HOSTVAR": "h"})
    base.update(changes)
    return StartRequest(**base)


def test_default_namespaces_and_maps():
    p = build_plan(request(), ImageFacts())
    assert p.namespaces == flags.CLONE_NEWUSER | flags.CLONE_NEWNS
    assert p.uid_map == "1001 1001 1" and p.gid_map == "1002 1002 1"
    assert (p.inner_uid, p.inner_gid) == (1001, 1002)
    assert not p.pid_namespace and not p.writable


def test_root_and_optional_namespaces():
    p = build_plan(request(remap_root=True, unshare_net=True, unshare_ipc=True, unshare_uts=True, unshare_pid=True,
                           writable=True), ImageFacts())
    assert p.uid_map == "0 1001 1" and p.gid_map == "0 1002 1"
    assert p.inner_uid == 0
    assert p.namespaces & flags.CLONE_NEWNET and p.namespaces & flags.CLONE_NEWIPC and p.namespaces & flags.CLONE_NEWUTS
    assert not p.namespaces & flags.CLONE_NEWPID  # needs a fork: handled apart
    assert p.pid_namespace and p.writable


def test_superuser_keeps_host_identity():
    p = build_plan(request(outer_uid=0, outer_gid=0, userns=False), ImageFacts())
    assert not p.namespaces & flags.CLONE_NEWUSER
    assert p.inner_uid == 0


def test_environment_precedence():
    image = ImageFacts(environment="A=image\nB=image\nC=image\nD=image\nE=image\nT=${TERM}\n")
    p = build_plan(request(
        environ_files=(("system.env", "B=system\nC=system\nD=system\nE=system\n"), ("user.env", "C=user\nD=user\n")),
        script_environ="D=script\nE=script\n",
        env=(("E", "cli"), ("HOSTVAR", None)),
    ), image)
    assert p.environ == {"A": "image", "B": "system", "C": "user", "D": "script", "E": "cli", "T": "xterm",
                         "HOSTVAR": "h"}


def test_host_environment_not_inherited():
    assert "HOSTVAR" not in build_plan(request(), ImageFacts()).environ


def test_mount_order_and_passes():
    p = build_plan(request(
        mount_files=(("10-system.fstab", "/proc /proc none rbind 0 -1\n/late1 /l1 none bind\n"),
                     ("user.fstab", "/sys /sys none rbind 0 -1\n/late2 /l2 none bind 0 1\n")),
        script_mounts="/late3 /l3 none bind\n",
        mounts=(plan.mount_from_entry(fstab.from_cli("/late4:/l4")),),
    ), ImageFacts(fstab="/img /i none bind\n"))
    assert [m.target for m in p.early_mounts] == ["/proc", "/sys"]
    assert [m.target for m in p.late_mounts] == ["/i", "/l1", "/l3", "/l4", "/l2"]


def test_pid_and_net_replace_proc_and_sys():
    p = build_plan(request(unshare_pid=True, unshare_net=True), ImageFacts())
    early = [(m.target, m.detach, m.fstype) for m in p.early_mounts]
    assert early == [("/proc", True, None), ("/proc", False, "proc"), ("/sys", True, None), ("/sys", False, "sysfs")]


def test_image_fstab_substitution_from_host():
    p = build_plan(request(host_environ={"DATA": "/scratch"}), ImageFacts(fstab="${DATA} /data none bind\n"))
    assert p.late_mounts[0].source == "/scratch"


@pytest.mark.parametrize(("facts", "rc_text", "expected"), [
    (ImageFacts(has_rc=True, has_rc_local=True), None, "/etc/rc"),
    (ImageFacts(has_rc_local=True), None, "/etc/rc.local"),
    (ImageFacts(), None, None),
    (ImageFacts(has_rc=True), "echo custom\n", None),
])
def test_init_script_choice(facts, rc_text, expected):
    assert build_plan(request(rc_text=rc_text), facts).use_image_rc == expected


def _plan(command=(), login=True):
    return build_plan(request(command=command, login=login), ImageFacts())


def test_exec_argv():
    assert plan.exec_argv(_plan(("ls", "-l")), "/bin/sh", "/etc/rc") == ["/bin/sh", "-sh", "/etc/rc", "ls", "-l"]
    assert plan.exec_argv(_plan(("ls", "-l"), login=False), "/bin/sh", "/etc/rc") == [
        "/bin/sh", "sh", "/etc/rc", "ls", "-l"]
    assert plan.exec_argv(_plan(("ls", "-l")), "/bin/sh", None) == ["ls", "ls", "-l"]
    assert plan.exec_argv(_plan(("echo a; echo b",)), "/bin/sh", None) == ["/bin/sh", "-sh", "-c", "echo a; echo b"]
    assert plan.exec_argv(_plan(()), "/bin/bash", None) == ["/bin/bash", "-bash"]


def test_config_file_order_and_override():
    ordered = plan.config_files(["10-system.fstab", "20-config.fstab"], ["05-site.fstab", "20-config.fstab"],
                                ["01-mine.fstab", "10-system.fstab"])
    assert ordered == [("system", "05-site.fstab"), ("system", "20-config.fstab"), ("user", "01-mine.fstab"),
                       ("user", "10-system.fstab")]
    assert plan.config_files(["a", "c"], ["b"], []) == [("builtin", "a"), ("system", "b"), ("builtin", "c")]


class FakeTree:
    """Symlinks of a pretend image: container path -> link target."""

    def __init__(self, links):
        self.links = links

    def __call__(self, path):
        return self.links.get(path)


@pytest.mark.parametrize(("path", "links", "expected"), [
    ("/a/b", {}, "/a/b"),
    ("/../../etc/passwd", {}, "/etc/passwd"),
    ("/a/../../../x", {}, "/x"),
    ("/evil/etc", {"/evil": "/"}, "/etc"),
    ("/evil/etc", {"/evil": "../../.."}, "/etc"),
    ("/mnt/data", {"/mnt": "/host/../../real"}, "/real/data"),
    ("/x/y", {"/x": "rel", "/rel": "/abs"}, "/abs/y"),
    ("//./a//b/.", {}, "/a/b"),
])
def test_resolve_inside_never_leaves_root(path, links, expected):
    assert plan.resolve_inside(path, FakeTree(links)) == expected


@pytest.mark.parametrize(("path", "links"), [
    ("/../etc", {}), ("a/../../x", {}), ("/evil/etc", {"/evil": "../../.."}), ("/up/x", {"/up": "/.."}),
])
def test_mount_paths_that_climb_out_are_refused(path, links):
    """For mounts (refuse_escape), a `..` above the root is enroot's EXDEV instead of staying at the root."""
    with pytest.raises(plan.PathEscapeError, match="Invalid cross-device link"):
        plan.resolve_inside(path, FakeTree(links), refuse_escape=True)


@pytest.mark.parametrize(("path", "links", "expected"), [
    ("tmp/.X11-unix", {}, "/tmp/.X11-unix"), ("/evil/etc", {"/evil": "/"}, "/etc"),
    ("/a/../b", {}, "/b"), ("/lib/x", {"/lib": "usr/lib"}, "/usr/lib/x"),
])
def test_mount_paths_inside_resolve(path, links, expected):
    assert plan.resolve_inside(path, FakeTree(links), refuse_escape=True) == expected


def test_resolve_inside_loops():
    with pytest.raises(ConfigError):
        plan.resolve_inside("/a", FakeTree({"/a": "/b", "/b": "/a"}))


def test_hook_steps_order_and_replacement(tmp_path):
    from pyenroot.runtime import hooks

    system, user = tmp_path / "system", tmp_path / "user"
    system.mkdir()
    user.mkdir()
    for directory, name, mode in ((system, "50-site.sh", 0o755), (system, "10-shadow.sh", 0o644),
                                  (user, "05-mine.sh", 0o755), (user, "README", 0o755), (user, "60-off.sh", 0o600)):
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(mode)
    builtins = (("10-home", "m:home"), ("10-shadow", "m:shadow"), ("98-nvidia", "m:gpu"))
    steps = hooks.hook_steps(system, user, builtins)
    assert [(s.name, s.target is not None) for s in steps] == [
        ("10-home", True), ("50-site.sh", False), ("98-nvidia", True), ("05-mine.sh", False)]
    # the non-executable 10-shadow.sh switched the built-in off; 60-off.sh is not executable either


def test_config_script_directives_and_rc_body():
    from pyenroot.runtime import configscript

    text = "#!/bin/bash\n#ENROOT_REMAP_ROOT=y\n# ENROOT_MOUNT_HOME no\n#ENROOT_DATA=\"${BASE}/x\"\n#NOT_ENROOT=1\n"
    assert configscript.directives(text, {"BASE": "/b"}) == {
        "ENROOT_REMAP_ROOT": "y", "ENROOT_MOUNT_HOME": "no", "ENROOT_DATA": "/b/x"}
    assert configscript.rc_body("rc () \n{ \n    echo hi;\n    exec \"$@\"\n}\n") == '    echo hi;\n    exec "$@"\n'


def test_account_merge():
    from pyenroot.runtime.builtin_hooks import merge_accounts

    existing = ("root:x:0:0:root:/root:/bin/bash\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n"
                "me:x:5:5::/:/bin/sh\nother:x:1001:1001::/home/other:/bin/sh\nkeep:x:7:7::/:/bin/sh\n")
    first = ["root:x:0:0:root:/root:/bin/bash", "me:x:1001:1001::/home/me:/bin/sh"]
    merged = merge_accounts(existing, first, {"_apt"}, set()).splitlines()
    assert merged == ["root:x:0:0:root:/root:/bin/bash", "me:x:1001:1001::/home/me:/bin/sh", "keep:x:7:7::/:/bin/sh"]


def test_namespace_stage_maps_the_callers_ids():
    """As enroot: `UID UID 1` (scripts compare the second field with `id -u`), `0 UID 1` with remap-root."""
    stage = plan.namespace_stage(request(unshare_net=True))
    assert stage == (flags.CLONE_NEWUSER | flags.CLONE_NEWNS | flags.CLONE_NEWNET, "1001 1001 1", "1002 1002 1")
    assert plan.namespace_stage(request(remap_root=True))[1:] == ("0 1001 1", "0 1002 1")


def test_namespace_stage_for_the_superuser():
    assert plan.namespace_stage(request(outer_uid=0, outer_gid=0, userns=False)) == (flags.CLONE_NEWNS, "", "")


OUR_RC = """# enroot-provenance: docker://registry#acc/busybox:1

mkdir -p '/' 2> /dev/null
cd '/' && unset OLDPWD || exit 1

if [ -s /etc/rc.local ]; then
    . /etc/rc.local
fi

if [ $# -gt 0 ]; then
    exec "$@"
else
    exec '/bin/sh'
fi
"""
ENROOT_RC_LOCAL = "# This file is sourced by /etc/rc when the container starts.\n# It can be used to tweak it.\n"


@pytest.mark.parametrize(("rc", "rc_local", "runs"), [
    (OUR_RC, ENROOT_RC_LOCAL, True),
    (OUR_RC, "", True),
    (OUR_RC.replace('exec "$@"', "exec 'python3' \"$@\""), "", False),  # an Entrypoint takes the arguments
    (OUR_RC, "export PATH=/opt/bin:$PATH\n", False),  # rc.local may change the lookup
    (OUR_RC, "set -- /bin/echo \"$@\"\n", False),  # or the arguments
    (OUR_RC, "# PATH is not changed here\n", True),  # comments do not count
    ('"$@"\n', "", False),  # a function or builtin would work here
    ("exec \"$@\"\n", "", True),
])
def test_rc_runs_arguments(rc, rc_local, runs):
    assert plan.rc_runs_arguments(rc, rc_local) is runs


def test_exec_argv_checks_the_command_only_when_the_script_runs_it():
    start = build_plan(StartRequest(command=("nosuchcmd", "a b"), login=False), ImageFacts(has_rc=True))
    assert plan.exec_argv(start, "/bin/sh", "/etc/rc") == ["/bin/sh", "sh", "/etc/rc", "nosuchcmd", "a b"]
    assert plan.exec_argv(start, "/bin/sh", "/etc/rc", check_command=True) == \
        ["/bin/sh", "sh", "-c", plan.CHECKED_RC, "/etc/rc", "nosuchcmd", "a b"]
    without = build_plan(StartRequest(command=(), login=False), ImageFacts(has_rc=True))
    assert plan.exec_argv(without, "/bin/sh", "/etc/rc", check_command=True) == ["/bin/sh", "sh", "/etc/rc"]


@pytest.mark.parametrize("shell", ["sh", "bash", "dash"])
def test_checked_rc_in_a_real_shell(tmp_path, shell):
    """The check names a missing command with exit 127 and otherwise runs the script with its arguments."""
    import shutil
    import subprocess

    if shutil.which(shell) is None:
        pytest.skip(f"no {shell}")
    rc = tmp_path / "rc"
    rc.write_text('echo "rc=$0 args=$#"\nexec "$@"\n')
    env = {"PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([shell, "-c", plan.CHECKED_RC, str(rc), *args], capture_output=True, text=True,
                              env=env)

    missing = run("nosuchcmd", "x")
    assert (missing.returncode, missing.stdout) == (127, "")
    assert missing.stderr == ("pyenroot: error: command not found in the container: nosuchcmd "
                              "(not in the container's PATH: /usr/bin:/bin) (command-not-found)\n")
    absolute = run("/no/such")
    assert absolute.returncode == 127 and "/no/such (no such executable file)" in absolute.stderr
    found = run("echo", "two words", "x")
    assert (found.returncode, found.stdout) == (0, f"rc={rc} args=3\ntwo words x\n")
