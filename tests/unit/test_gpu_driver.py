"""Driver discovery against fake driver trees (no GPU, no root)."""

from pathlib import Path

from pyenroot.gpu import driver, ldcache
from tests.helpers.fakegpu import DRIVER_VERSION, GPU_UUIDS, LIB32, LIB64, MIG_UUID, make_fake_driver


def test_parse_proc_version_variants():
    proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
    open_module = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs)\n"
    assert driver.parse_proc_version(proprietary) == "535.104.05"
    assert driver.parse_proc_version(open_module) == "550.54.15"
    assert driver.parse_proc_version("garbage") is None


def test_parse_smi_outputs():
    assert driver.parse_smi_header("| NVIDIA-SMI 550.54.15  Driver Version: 550.54.15  CUDA Version: 12.4 |") == (
        "550.54.15", "12.4")
    listed = driver.parse_smi_list(
        "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaa)\n"
        "  MIG 1g.5gb      Device  0: (UUID: MIG-bbb)\n"
        "  MIG 1g.5gb      Device  1: (UUID: MIG-ccc)\n"
        "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-ddd)\n")
    assert listed == [(0, "NVIDIA A100-SXM4-40GB", "GPU-aaa", [(0, "MIG-bbb"), (1, "MIG-ccc")]),
                      (1, "NVIDIA A100-SXM4-40GB", "GPU-ddd", [])]
    assert driver.parse_mig_minors("config 1\ngpu0/gi1/access 12\nbad line here\n") == {
        "config": 1, "gpu0/gi1/access": 12}


def test_brands():
    assert driver.brand_of("Tesla V100-SXM2-16GB") == "tesla"
    assert driver.brand_of("NVIDIA H200") == "tesla"
    assert driver.brand_of("NVIDIA A100-SXM4-80GB") == "tesla"
    assert driver.brand_of("NVIDIA GeForce RTX 4090") == "geforce"
    assert driver.brand_of("NVIDIA RTX A6000") == "quadro"
    assert driver.brand_of(None) is None


def test_elf_info():
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x03\x00" + (62).to_bytes(2, "little")
    assert driver.elf_info(header) == (64, "x86_64")
    assert driver.elf_info(b"not an elf file at all") is None


def test_no_driver(tmp_path):
    found = driver.discover(tmp_path)
    assert not found.present and found.gpus == ()


def test_discover_fake_tree(tmp_path):
    make_fake_driver(tmp_path)
    found = driver.discover(tmp_path)
    assert found.present and found.version == DRIVER_VERSION and found.cuda_version is None
    assert [(g.index, g.minor, g.uuid, g.model) for g in found.gpus] == [
        (0, 0, GPU_UUIDS[0], "NVIDIA H200"), (1, 1, GPU_UUIDS[1], "NVIDIA H200")]
    assert set(found.devices) == {"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"}
    assert found.device_node(found.gpus[1]) == tmp_path / "dev/nvidia1"
    assert set(found.binaries) == {"nvidia-smi", "nvidia-debugdump", "nvidia-cuda-mps-control"}
    assert [p.name for p in found.firmware] == ["gsp_ga10x.bin"]


def test_libraries_prefer_the_running_driver_version(tmp_path):
    make_fake_driver(tmp_path)
    libraries = {(lib.path.name, lib.bits): lib for lib in driver.discover(tmp_path).libraries}
    cuda64 = libraries[(f"libcuda.so.{DRIVER_VERSION}", 64)]
    assert cuda64.path == (tmp_path / LIB64 / f"libcuda.so.{DRIVER_VERSION}").resolve()
    assert cuda64.names == ("libcuda.so", "libcuda.so.1", f"libcuda.so.{DRIVER_VERSION}")
    assert cuda64.capability == "compute" and cuda64.flags == driver.native_flags()
    assert libraries[(f"libcuda.so.{DRIVER_VERSION}", 32)].path.parent == (tmp_path / LIB32).resolve()
    assert libraries[(f"libcuda.so.{DRIVER_VERSION}", 32)].flags == ldcache.FLAG_ELF_LIBC6
    assert not any("470" in name for name, _ in libraries)
    assert libraries[(f"libGLX_nvidia.so.{DRIVER_VERSION}", 64)].capability == "graphics"
    assert libraries[(f"libnvidia-encode.so.{DRIVER_VERSION}", 64)].capability == "video"


def test_libraries_from_the_ld_cache(tmp_path):
    """Libraries outside the usual directories are found through the host's ld.so.cache."""
    make_fake_driver(tmp_path)
    odd = tmp_path / "opt/nvidia/lib"
    odd.mkdir(parents=True)
    (odd / f"libnvidia-cfg.so.{DRIVER_VERSION}").write_text("fake cfg\n")
    (odd / "libnvidia-cfg.so.1").symlink_to(f"libnvidia-cfg.so.{DRIVER_VERSION}")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/ld.so.cache").write_bytes(ldcache.build(
        [ldcache.CacheEntry("libnvidia-cfg.so.1", "/opt/nvidia/lib/libnvidia-cfg.so.1", 0x0303)]))
    cfg = [lib for lib in driver.discover(tmp_path).libraries if lib.path.name.startswith("libnvidia-cfg")]
    assert len(cfg) == 1 and cfg[0].names == ("libnvidia-cfg.so.1", f"libnvidia-cfg.so.{DRIVER_VERSION}")
    assert cfg[0].flags == 0x0303 and cfg[0].capability == "utility"


def test_nvidia_smi_details_on_demand(tmp_path):
    make_fake_driver(tmp_path, mig=True, cuda="12.8")
    found = driver.discover(tmp_path, want_cuda=True, want_migs=True, want_arch=True)
    assert found.cuda_version == "12.8"
    assert found.gpus[0].migs[0].uuid == MIG_UUID and found.gpus[1].migs == ()
    assert [g.arch for g in found.gpus] == ["9.0", "9.0"]
    assert set(found.caps) == {"gpu0/gi1/access", "gpu0/gi1/ci0/access", "gpu1/gi1/access"}
    assert found.caps["gpu0/gi1/access"] == tmp_path / "dev/nvidia-caps/nvidia-cap12"


def test_gpus_from_nvidia_smi_without_proc(tmp_path: Path):
    make_fake_driver(tmp_path, with_proc=False)
    found = driver.discover(tmp_path)
    assert found.version == DRIVER_VERSION  # from the nvidia-smi banner
    assert [(g.index, g.minor, g.uuid, g.bus_id) for g in found.gpus] == [
        (0, 0, GPU_UUIDS[0], "00000000:17:00.0"), (1, 1, GPU_UUIDS[1], "00000000:2a:00.0")]


def test_report_rows(tmp_path):
    from pyenroot.gpu import report

    make_fake_driver(tmp_path)
    rows = {item: (state, detail) for item, state, detail in report.gpu_lines(driver.discover(tmp_path))}
    assert rows["driver"][0] == "ok" and DRIVER_VERSION in rows["driver"][1]
    assert rows["GPU 1"][0] == "ok" and GPU_UUIDS[1] in rows["GPU 1"][1]
    assert rows["capability compute"][0] == "ok" and rows["capability display"][0] == "missing"
    (tmp_path / "dev/nvidia1").unlink()
    assert dict((i, s) for i, s, _ in report.gpu_lines(driver.discover(tmp_path)))["GPU 1"] == "missing"
    assert report.gpu_lines(driver.discover(tmp_path / "none"))[0][:2] == ("driver", "none")


def test_cuda_version_cached_per_driver_version(tmp_path):
    fake = make_fake_driver(tmp_path / "nvidia", cuda="12.6")
    cache = tmp_path / "cache"
    assert driver.discover(fake.root, want_cuda=True, cache_dir=cache).cuda_version == "12.6"
    assert (cache / f"cuda-version-{DRIVER_VERSION}").read_text() == "12.6\n"
    (fake.root / "usr/bin/nvidia-smi").unlink()  # the cached answer is used from now on
    assert driver.discover(fake.root, want_cuda=True, cache_dir=cache).cuda_version == "12.6"
    assert driver.discover(fake.root, want_cuda=True).cuda_version is None
