"""The pure half of the SPANK plugin's Python side: names, mounts, start options, settings; cluster JSON."""

import json
import os
import types

import pytest

from pyenroot.config import Settings
from pyenroot.devtools import devcluster
from pyenroot.errors import PyenrootError
from pyenroot.runtime import assemble, flags
from pyenroot.slurm import cluster, reporter, step, translate
from pyenroot.slurm import state as slurm_state


def request(**kw) -> slurm_state.StepRequest:
    return slurm_state.StepRequest(job=42, step=3, **kw)


@pytest.mark.parametrize(("scope", "name", "expected"), [
    ("global", None, ("pyxis_42.3", "auto", False)),
    ("job", None, ("pyxis_42_42.3", "auto", False)),
    ("global", "web", ("pyxis_web", "auto", True)),
    ("job", "web:no_exec", ("pyxis_42_web", "no_exec", True)),
    ("global", "web:create", ("pyxis_web", "create", True)),
])
def test_container_names(scope, name, expected):
    got = translate.container_name(request(scope=scope, name=name))
    assert (got.name, got.flag, got.named) == expected


@pytest.mark.parametrize("name", [":exec", "x:attach"])
def test_bad_names(name):
    with pytest.raises(slurm_state.StepError):
        translate.container_name(request(name=name))


def test_docker_uri_and_path_images():
    assert translate.docker_uri("ubuntu:24.04") == "docker://ubuntu:24.04"
    assert translate.docker_uri("dockerd://x") == "dockerd://x"
    assert translate.is_path_image("./a.sqsh") and translate.is_path_image("/a.sqsh")
    assert not translate.is_path_image("a")


def _fields(entries) -> list[tuple[str, str, str, str]]:
    return [(e.source, e.target, e.fstype, ",".join(e.options)) for e in entries]


def test_mount_entries_follow_pyxis_defaults():
    spec = "/data:/mnt/d:ro+rprivate,tmpfs:/scratch,umount:/root,./rel,/data:/mnt/d:ro+rprivate"
    entries = translate.mount_entries(spec, "/home/u", exists=lambda p: True)
    assert _fields(entries) == [
        ("/data", "/mnt/d", "none", "x-create=auto,rbind,ro,rprivate"),
        ("tmpfs", "/scratch", "tmpfs", "x-create=dir"),
        ("none", "/root", "none", "x-detach"),
        ("/home/u/rel", "./rel", "none", "x-create=auto,rbind"),
    ]
    assert {(e.passno, e.origin) for e in entries} == {(0, "--container-mounts")}


def test_mount_paths_keep_blanks():
    """Mounts travel as values: blanks in paths need no escaping to survive."""
    got = translate.mount_entries("/a b:/c\td", None, exists=lambda p: True)
    assert _fields(got) == [("/a b", "/c\td", "none", "x-create=auto,rbind")]


@pytest.mark.parametrize(("spec", "message"), [
    ("", "--container-mounts: invalid format: "),
    (",/a", "--container-mounts: invalid format: ,/a"),
    ("/a,", "--container-mounts: invalid format: /a,"),
    ("/a,,/b", "--container-mounts: invalid format: /a,,/b"),
    (":", "--container-mounts: invalid format: :"),
    ("/tmp:", "--container-mounts: invalid format: /tmp:"),
    (":/x", "--container-mounts: invalid format: :/x"),
    ("/a:/b:ro x", "--container-mounts: invalid format: /a:/b:ro x"),
    ("devpts:/dev/pts", 'mount source must be a relative path, an absolute path, "tmpfs" or "umount"'),
    ("/tmp:mnt", "mount target must be a relative path or an absolute path"),
])
def test_bad_mounts_get_pyxis_messages(spec, message):
    """The plugin passes --container-mounts on unchecked: these are the only checks, with pyxis's words."""
    with pytest.raises(slurm_state.StepError) as caught:
        translate.mount_entries(spec, "/home/u", exists=lambda p: True)
    assert message in caught.value.message


def test_missing_mount_source():
    with pytest.raises(slurm_state.StepError, match="source path does not exist: /nope"):
        translate.mount_entries("/nope:/x", None, exists=lambda p: False)


def test_relative_path_needs_cwd():
    with pytest.raises(slurm_state.StepError):
        translate.resolve_path("out.sqsh", None, "--container-save")
    assert translate.resolve_path("../out.sqsh", "/home/u/w", "--container-save") == "/home/u/out.sqsh"


def test_start_options():
    """The anchor's start: mounts as values, the named host variables that are set, no entrypoint."""
    mounts = translate.mount_entries("/a:/b", None, exists=lambda p: True)
    options = translate.start_options(request(env_names=("FOO", "BAD;NAME", "UNSET", "EMPTY")), "pyxis_42.3", mounts,
                                 {"FOO": "bar", "BAD;NAME": "x", "EMPTY": ""})
    assert options.target == "pyxis_42.3" and options.command == translate.ANCHOR_COMMAND
    assert [(m.source, m.target, m.is_bind, m.create) for m in options.mounts] == [("/a", "/b", True, "auto")]
    assert options.env == (("FOO", "bar"),)
    assert not options.entrypoint
    assert translate.start_options(request(entrypoint=True), "x", [], {}).entrypoint
    assert assemble.WITHOUT_ENTRYPOINT_RC.rstrip().endswith('exec "$@"')


def test_batch_script_is_mounted_read_only_in_the_batch_step():
    batch = slurm_state.StepRequest(job=42, step=slurm_state.BATCH_STEP, batch_script="/spool/job42/slurm_script")
    options = translate.start_options(batch, "x", [], {})
    [mount] = options.mounts
    assert (mount.source, mount.target, mount.create) == ("/spool/job42/slurm_script",) * 2 + ("file",)
    assert mount.flags & flags.MS_RDONLY and mount.propagation == flags.MS_PRIVATE


def _settings_for(req, node: Settings):
    settings = node.overridden(**translate.setting_overrides(req))
    return assemble._settings_with_options(settings, translate.start_options(req, "x", [], {}), {})


def test_setting_overrides():
    assert translate.setting_overrides(request()) == {}
    node = Settings({"ENROOT_MOUNT_HOME": "y", "ENROOT_ROOTFS_WRITABLE": "y"})
    assert _settings_for(request(), node) == node  # unset options leave the node's configuration in charge
    got = _settings_for(request(mount_home=False, remap_root=True, writable=False, unshare=("net", "uts")), node)
    names = ("ENROOT_MOUNT_HOME", "ENROOT_REMAP_ROOT", "ENROOT_ROOTFS_WRITABLE", "ENROOT_UNSHARE_NET",
             "ENROOT_UNSHARE_UTS")
    assert {name: got.flag(name) for name in names} == {
        "ENROOT_MOUNT_HOME": False, "ENROOT_REMAP_ROOT": True, "ENROOT_ROOTFS_WRITABLE": False,
        "ENROOT_UNSHARE_NET": True, "ENROOT_UNSHARE_UTS": True}


def test_state_round_trip(tmp_path):
    req = request(runtime_path=str(tmp_path))
    (tmp_path / str(os.getuid())).mkdir()
    state = slurm_state.StepState("pyxis_42.3", named=False, created=True, save="/x.sqsh")
    slurm_state.save_state(req, state)
    assert slurm_state.load_state(req) == state


def test_reporter_lines():
    read_end, write_end = os.pipe()
    report = reporter.Reporter(write_end)
    report.log("imported docker image: x")
    report.join(12)
    report.seccomp(b"\x01\xff")
    report.close()
    assert os.read(read_end, 1000).decode().splitlines() == ["log imported docker image: x", "join 12", "seccomp 01ff"]


def test_parse_sinfo_and_squeue():
    sinfo = json.dumps({"nodes": [{"name": "node1", "state": "IDLE", "state_flags": []},
                                  {"name": "node2", "state": "IDLE", "state_flags": ["DRAIN"]},
                                  {"name": "node3", "state": "ALLOCATED", "state_flags": ["DRAIN"]}]})
    assert [(n.name, n.state) for n in cluster.parse_sinfo(sinfo)] == [
        ("node1", "idle"), ("node2", "drained"), ("node3", "draining")]
    squeue = json.dumps({"jobs": [{"job_id": 7, "user_name": "u", "job_state": "RUNNING", "nodes": "node1",
                                   "name": "x"}]})
    assert cluster.parse_squeue(squeue) == [cluster.JobInfo(7, "u", "running", "node1", "x")]


class FakeBackend:
    def nodes(self):
        return [cluster.NodeInfo("node1", "idle"), cluster.NodeInfo("node2", "allocated")]

    def jobs(self):
        return [cluster.JobInfo(1, "a", "running", "node1", "j"), cluster.JobInfo(2, "b", "pending", "", "k")]


def test_cluster_state_interface():
    state = cluster.ClusterState(backend=FakeBackend())
    assert state.idle(["node1"]) and not state.idle()
    assert [j.job_id for j in state.jobs(user="b")] == [2]


def test_render_cluster_config(tmp_path):
    spec = devcluster.ClusterSpec(directory=tmp_path, node_count=3, plugin=tmp_path / "p.so",
                                  plugin_args={"pyenroot": "/opt/x/pyenroot"}, controller_port=7000,
                                  first_node_port=7001)
    files = devcluster.render(spec)
    conf = files["slurm.conf"]
    assert "SlurmctldPort=7000" in conf
    assert conf.count("NodeName=node") == 3 and "Port=7003" in conf
    assert f"AuthInfo=socket={tmp_path}/munge/munge.sock" in conf
    plug = files["plugstack.conf.d/pyenroot.conf"]
    assert f"required {tmp_path}/p.so pyenroot=/opt/x/pyenroot runtime_path={tmp_path}/noderun" in plug
    assert "include" in files["plugstack.conf"]
    no_plugin = devcluster.render(devcluster.ClusterSpec(directory=tmp_path))
    assert "required" not in no_plugin["plugstack.conf.d/pyenroot.conf"]


def test_cluster_cli_arguments(tmp_path):
    args = devcluster.build_parser().parse_args(["up", "-d", str(tmp_path), "--port", "27000", "--plugin",
                                                 "/x/p.so", "--plugin-arg", "container_scope=job"])
    spec = devcluster.spec_from_args(args)
    assert (spec.controller_port, spec.first_node_port) == (27000, 27001)
    assert spec.plugin_args["container_scope"] == "job"
    with pytest.raises(devcluster.UsageError):
        devcluster._parse_plugin_args(["novalue"])


def test_result_reporter_uses_the_named_fd():
    read_end, write_end = os.pipe()
    environ = {"PYENROOT_SPANK_RESULT_FD": str(write_end)}
    report = reporter.result_reporter(environ)
    assert environ == {} and report.fd == write_end
    report.error("boom")
    report.close()
    assert os.read(read_end, 100) == b"error boom\n"
    assert reporter.result_reporter({}).fd is None
    assert reporter.result_reporter({"PYENROOT_SPANK_RESULT_FD": "999"}).fd is None


def trusted_cache(monkeypatch) -> None:
    from pyenroot.image.built import BuiltImages

    monkeypatch.setattr(BuiltImages, "of", classmethod(lambda cls, settings: types.SimpleNamespace(
        unusable=lambda: None)))


def test_import_lines_every_time_also_from_the_cache(tmp_path, monkeypatch):
    from pyenroot.image import cached_images

    held = types.SimpleNamespace(path=tmp_path / "x.sqsh", fd=-1, identity=("sha256:" + "a" * 64, "docker://x"))
    trusted_cache(monkeypatch)
    monkeypatch.setattr(cached_images, "build_into_cache", lambda uri, arch, settings, **kw: held)
    read_end, write_end = os.pipe()
    report = reporter.Reporter(write_end)
    for tasks in (1, 8):
        found = step._import_image(request(image="reg:5000#x/y:1", total_tasks=tasks, runtime_path=str(tmp_path)),
                                   Settings({}), report, tmp_path / "t")
        assert found == (held.path, False)
    report.close()
    lines = os.read(read_end, 1000).decode().splitlines()
    assert lines == ["log importing docker image: reg:5000#x/y:1", "log imported docker image: reg:5000#x/y:1"] * 2


def job_runtime(tmp_path):
    runtime = tmp_path / "run"
    (runtime / str(os.getuid())).mkdir(parents=True, mode=0o700)
    return str(runtime)


def test_later_steps_of_a_job_take_the_tag_an_earlier_one_resolved(tmp_path, monkeypatch):
    """The first step resolves (known=None) and records what it found; later steps of the job on this node
    pass that on (no request); another job, or another image, resolves again."""
    from pyenroot.image import cached_images

    digest = "sha256:" + "b" * 64
    asked = []

    def build_into_cache(uri, arch, settings, **kw):
        asked.append((uri, kw["known"]))
        return types.SimpleNamespace(path=tmp_path / "x.sqsh", fd=None, identity=(digest, "docker://reg/x/y:1"))

    trusted_cache(monkeypatch)
    monkeypatch.setattr(cached_images, "build_into_cache", build_into_cache)
    runtime = job_runtime(tmp_path)
    for job, step_id, image in ((7, 0, "reg#x/y:1"), (7, 1, "reg#x/y:1"), (8, 0, "reg#x/y:1"), (7, 2, "reg#x/z:1")):
        step._import_image(slurm_state.StepRequest(job=job, step=step_id, image=image, runtime_path=runtime),
                           Settings({}), reporter.Reporter(None), tmp_path / "t")
    known = (digest, "docker://reg/x/y:1")
    assert asked == [("docker://reg#x/y:1", None), ("docker://reg#x/y:1", known), ("docker://reg#x/y:1", None),
                     ("docker://reg#x/z:1", None)]
    assert slurm_state.resolved_image(slurm_state.StepRequest(job=7, step=3, runtime_path=runtime),
                                      "docker://reg#x/z:1") == known


def test_a_damaged_job_image_record_is_ignored(tmp_path):
    runtime = job_runtime(tmp_path)
    request = slurm_state.StepRequest(job=7, step=0, runtime_path=runtime)
    path = slurm_state.job_images_path(slurm_state.user_runtime(request), 7)
    for text in ("not json", "[]", '{"docker://a": ["sha256:xyz", "docker://a"]}', '{"docker://a": "x"}'):
        path.write_text(text)
        assert slurm_state.resolved_image(request, "docker://a") is None
    slurm_state.remember_resolved_image(request, "docker://a", ("sha256:" + "c" * 64, "docker://a"))
    assert slurm_state.resolved_image(request, "docker://a") == ("sha256:" + "c" * 64, "docker://a")


def test_an_untrusted_cache_makes_the_step_import_its_own_file(tmp_path, monkeypatch):
    from pyenroot.image import cached_images

    calls = []
    trusted_cache(monkeypatch)
    monkeypatch.setattr(cached_images, "build_into_cache", lambda uri, arch, settings, **kw: None)
    monkeypatch.setattr(step, "_import_to", lambda uri, output, settings: calls.append((uri, output, settings)))
    settings = Settings({"PYENROOT_IMAGE_STORE": "/site/store"})
    found = step._import_image(request(image="reg#x/y:1"), settings, reporter.Reporter(None), tmp_path / "t.sqsh")
    assert found == (tmp_path / "t.sqsh", True)
    (uri, output, used), = calls
    assert (uri, output) == ("docker://reg#x/y:1", tmp_path / "t.sqsh")
    assert used.get("PYENROOT_IMAGE_STORE") is None  # build_into_cache asked the store already


def test_container_mounts_check_x_create():
    with pytest.raises(PyenrootError, match="x-create must be dir, file or auto"):
        translate.mount_entries("/tmp:/d:x-create=bogus", "/", exists=lambda path: True)
