"""Request + discovered driver -> mounts and environment (fake driver trees, no kernel)."""

from pathlib import Path

import pytest

from pyenroot.gpu import driver, ldcache
from pyenroot.gpu.plan import BIN_DIR, LIB32_DIR, LIB64_DIR, make_plan
from pyenroot.gpu.request import GpuError, from_environ
from pyenroot.runtime import fstab
from tests.helpers.fakegpu import DRIVER_VERSION, GPU_UUIDS, MIG_UUID, make_fake_driver


def plan_for(root: Path, env: dict, host: dict | None = None, *, cache: bytes | None = None, path="/bin", **wants):
    request = from_environ(env, host or {})
    assert request is not None
    found = driver.discover(root, **wants)
    return make_plan(request, found, container_cache=cache, container_path=path, cache_dir=root / "run")


def targets(plan) -> dict[str, fstab.FstabEntry]:
    return {e.target: e for e in (fstab.parse_line(line, "plan") for line in plan.mounts)}


@pytest.fixture
def fake(tmp_path):
    return make_fake_driver(tmp_path / "nvidia")


def test_default_capabilities(fake):
    plan = plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "all"})
    mounted = targets(plan)
    assert {"/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} <= set(
        mounted)
    assert mounted["/dev/nvidia1"].source == str(fake.root / "dev/nvidia1")
    assert "nodev" not in mounted["/dev/nvidia0"].options and "bind" in mounted["/dev/nvidia0"].options
    for name in ("libcuda.so.1", f"libcuda.so.{DRIVER_VERSION}", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1"):
        assert f"{LIB64_DIR}/{name}" in mounted and "ro" in mounted[f"{LIB64_DIR}/{name}"].options
    assert not any("encode" in t or "GLX" in t or t.startswith(LIB32_DIR + "/") for t in mounted)  # video, graphics
    assert {f"{BIN_DIR}/nvidia-smi", f"{BIN_DIR}/nvidia-cuda-mps-control"} <= set(mounted)
    assert f"/lib/firmware/nvidia/{DRIVER_VERSION}/gsp_ga10x.bin" in mounted
    assert plan.environ == {"PATH": f"/bin:{BIN_DIR}"}


def test_tmpfs_comes_before_the_binds_into_it(fake):
    plan = plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "all"})
    entries = [fstab.parse_line(line, "plan") for line in plan.mounts]
    tmpfs = next(i for i, e in enumerate(entries) if e.fstype == "tmpfs")
    assert entries[tmpfs].target == "/usr/local/nvidia" and "x-create=dir" in entries[tmpfs].options
    assert all(i > tmpfs for i, e in enumerate(entries) if e.target.startswith("/usr/local/nvidia/"))


def test_private_ld_cache(fake):
    image_cache = ldcache.build([ldcache.CacheEntry("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6", 0x0303)])
    plan = plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "0"}, cache=image_cache)
    mounted = targets(plan)
    source = Path(mounted["/etc/ld.so.cache"].source)
    assert source.parent == fake.root / "run" and "ro" in mounted["/etc/ld.so.cache"].options
    entries = {(e.name, e.path) for e in ldcache.parse(plan.files[source])}
    assert ("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6") in entries
    assert ("libcuda.so.1", f"{LIB64_DIR}/libcuda.so.1") in entries
    assert ("libnvidia-ml.so.1", f"{LIB64_DIR}/libnvidia-ml.so.1") in entries
    # the same image and driver give the same file (named by content)
    again = plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "1"}, cache=image_cache)
    assert list(again.files) == list(plan.files)


def test_selected_devices_only(fake):
    plan = plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": GPU_UUIDS[1]})
    mounted = targets(plan)
    assert "/dev/nvidia1" in mounted and "/dev/nvidia0" not in mounted and "/dev/nvidiactl" in mounted
    assert [s.gpu.index for s in plan.selected] == [1]


def test_none_gives_the_driver_without_gpus(fake):
    plan = plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "none"})
    mounted = targets(plan)
    assert "/dev/nvidia0" not in mounted and "/dev/nvidia1" not in mounted
    assert "/dev/nvidiactl" in mounted and f"{LIB64_DIR}/libcuda.so.1" in mounted


def test_capabilities_select_libraries(fake):
    mounted = targets(plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "0",
                                           "NVIDIA_DRIVER_CAPABILITIES": "video,graphics,compat32,compute"}))
    assert f"{LIB64_DIR}/libnvidia-encode.so.1" in mounted and f"{LIB64_DIR}/libGLX_nvidia.so.0" in mounted
    assert f"{LIB32_DIR}/libcuda.so.1" in mounted
    assert f"{LIB64_DIR}/libnvidia-ml.so.1" not in mounted and f"{BIN_DIR}/nvidia-smi" not in mounted
    utility = targets(plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "0", "NVIDIA_DRIVER_CAPABILITIES": "utility"}))
    assert f"{LIB64_DIR}/libcuda.so.1" not in utility and f"{BIN_DIR}/nvidia-smi" in utility


def test_missing_gpu_is_named(fake):
    with pytest.raises(GpuError, match=r"GPU 7 requested .* does not exist .*GPUs: 0, 1"):
        plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "0,7"})
    with pytest.raises(GpuError, match="GPU-deadbeef"):
        plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "GPU-deadbeef"})


def test_missing_device_node_is_named(fake):
    (fake.root / "dev/nvidia1").unlink()
    with pytest.raises(GpuError, match="dev/nvidia1 of GPU 1 does not exist"):
        plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "all"})


def test_no_driver(tmp_path):
    empty = from_environ({"NVIDIA_VISIBLE_DEVICES": "all"}, {})
    none_found = driver.discover(tmp_path)
    assert make_plan(empty, none_found, container_cache=None, container_path=None, cache_dir=tmp_path).mounts == []
    with pytest.raises(GpuError, match="no NVIDIA driver is loaded"):
        make_plan(from_environ({"NVIDIA_VISIBLE_DEVICES": "0"}, {}), none_found, container_cache=None,
                  container_path=None, cache_dir=tmp_path)


def test_cuda_requirement(fake):
    env = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_REQUIRE_CUDA": "cuda>=12.8"}
    with pytest.raises(GpuError) as error:
        plan_for(fake.root, env, want_cuda=True)
    assert "cuda>=12.8" in error.value.message and "CUDA 12.4" in error.value.message
    assert "NVIDIA_DISABLE_REQUIRE" in error.value.hint
    assert plan_for(fake.root, {**env, "NVIDIA_DISABLE_REQUIRE": "1"}).mounts
    assert plan_for(fake.root, {**env, "NVIDIA_REQUIRE_CUDA": "cuda>=12.0"}, want_cuda=True).mounts
    # CUDA images' form: the brand alternative saves an older driver on data-centre GPUs
    legacy = {**env, "NVIDIA_REQUIRE_CUDA": "cuda>=12.8 brand=tesla,driver>=550,driver<551"}
    assert plan_for(fake.root, legacy, want_cuda=True).mounts


def test_slurm_allocation_restricts(fake):
    host = {"SLURM_JOB_ID": "42", "SLURM_STEP_GPUS": "1"}
    plan = plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "all"}, host)
    assert [s.gpu.index for s in plan.selected] == [1] and "/dev/nvidia0" not in targets(plan)
    with pytest.raises(GpuError, match=r"GPU 0 is not allocated to this Slurm job \(allocated: 1\)"):
        plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "0"}, host)


def test_mig_device(tmp_path):
    fake = make_fake_driver(tmp_path / "nvidia", mig=True)
    plan = plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": MIG_UUID}, want_migs=True)
    mounted = targets(plan)
    assert "/dev/nvidia0" in mounted and "/dev/nvidia1" not in mounted
    assert {"/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13"} <= set(mounted)
    assert "/dev/nvidia-caps/nvidia-cap21" not in mounted
    assert plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "0:0"}, want_migs=True).selected[0].mig.uuid == MIG_UUID


def test_path_default_or_left_alone(fake):
    assert plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "all"}, path=None).environ == {
        "PATH": f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{BIN_DIR}"}
    assert plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "all"}, path=f"{BIN_DIR}:/bin").environ == {}


def test_hook_adds_mounts_environment_and_writes_the_cache(fake, tmp_path):
    from pyenroot.gpu.hook import nvidia_hook
    from pyenroot.runtime.hookapi import HookContext

    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    ctx = HookContext(rootfs=rootfs, environ={"NVIDIA_VISIBLE_DEVICES": "1", "PATH": "/bin"},
                      host_environ={"PYENROOT_NVIDIA_ROOT": str(fake.root),
                                    "ENROOT_RUNTIME_PATH": str(tmp_path / "runtime")},
                      outer_uid=1000, outer_gid=1000, remap_root=False, pid=1)
    nvidia_hook(ctx)
    mounted = {e.target: e for e in (fstab.parse_line(line, "hook") for line in ctx.mounts)}
    assert "/dev/nvidia1" in mounted and "/dev/nvidia0" not in mounted
    cache = Path(mounted["/etc/ld.so.cache"].source)
    assert cache.parent == tmp_path / "runtime/nvidia" and cache.is_file()
    assert ctx.environ["PATH"] == f"/bin:{BIN_DIR}"
    untouched = HookContext(rootfs=rootfs, environ={"NVIDIA_VISIBLE_DEVICES": "void"}, host_environ={},
                            outer_uid=1000, outer_gid=1000, remap_root=False, pid=1)
    nvidia_hook(untouched)
    assert untouched.mounts == []


def test_mig_config_and_monitor_capabilities(tmp_path):
    fake = make_fake_driver(tmp_path / "nvidia", mig=True)
    for minor in (1, 2):
        (fake.root / "dev/nvidia-caps" / f"nvidia-cap{minor}").write_text(f"cap {minor}\n")
    mounted = targets(plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_MIG_CONFIG_DEVICES": "all"}))
    assert "/dev/nvidia-caps/nvidia-cap1" in mounted and "/dev/nvidia-caps/nvidia-cap2" not in mounted
    mounted = targets(plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_MIG_MONITOR_DEVICES": "0"}))
    assert "/dev/nvidia-caps/nvidia-cap2" in mounted and "/dev/nvidia-caps/nvidia-cap1" not in mounted


def test_daemon_sockets(fake):
    (fake.root / "run/nvidia-persistenced").mkdir(parents=True)
    (fake.root / "run/nvidia-persistenced/socket").write_text("")
    (fake.root / "tmp/nvidia-mps").mkdir(parents=True)
    mounted = targets(plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "all"}))
    assert "ro" in mounted["/run/nvidia-persistenced/socket"].options
    assert "x-create=dir" in mounted["/tmp/nvidia-mps"].options
    video_only = targets(plan_for(fake.root, {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "video"}))
    assert "/tmp/nvidia-mps" not in video_only and "/run/nvidia-persistenced/socket" not in video_only
