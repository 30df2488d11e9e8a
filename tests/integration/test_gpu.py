"""GPUs in containers against a fake driver tree, as the unprivileged user; and `pyenroot doctor`.

The fake device nodes are plain files naming themselves, so a container can show which ones it got. The
container's /dev is the minimal one (ENROOT_RESTRICT_DEV): the host's /dev has no nvidia nodes to bind over.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pyenroot.gpu import ldcache
from tests.helpers.fakegpu import DRIVER_VERSION, GPU_UUIDS, make_fake_driver

SHOW = ("ls /dev | grep nvidia | sort; cat /dev/nvidia* 2>/dev/null; ls /usr/local/nvidia/lib64 2>/dev/null | sort;"
        " echo PATH=$PATH; nvidia-smi -L 2>&1 || true")


@pytest.fixture
def fake(user):
    driver = make_fake_driver(user.home / "fake-nvidia")
    return driver


def gpu_env(user, fake, **extra: str) -> dict[str, str]:
    return {"PYENROOT_NVIDIA_ROOT": str(fake.root), "ENROOT_RESTRICT_DEV": "y", **extra}


def start(user, image: Path, env: dict[str, str], *args: str, script: str = SHOW) -> subprocess.CompletedProcess:
    return user.pyenroot("start", *args, str(image), "sh", "-c", script, env=env)


def test_selected_gpu_devices_libraries_and_binaries(user, fake, busybox_sqsh):
    result = start(user, busybox_sqsh, gpu_env(user, fake, NVIDIA_VISIBLE_DEVICES="1"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "nvidia1" in lines and "nvidiactl" in lines and "nvidia-uvm" in lines
    assert "nvidia0" not in lines
    assert "fake nvidia1" in lines and "fake nvidia0" not in lines
    assert "libcuda.so.1" in lines and f"libcuda.so.{DRIVER_VERSION}" in lines and "libnvidia-ml.so.1" in lines
    assert not any("encode" in line for line in lines)  # video was not asked for
    assert any(line.startswith("PATH=") and line.endswith(":/usr/local/nvidia/bin") for line in lines)
    assert f"GPU 1: NVIDIA H200 (UUID: {GPU_UUIDS[1]})" in lines  # the fake nvidia-smi, run inside


def test_all_by_env_option_and_capabilities(user, fake, busybox_sqsh):
    result = start(user, busybox_sqsh, gpu_env(user, fake), "--env", "NVIDIA_VISIBLE_DEVICES=all",
                   "--env", "NVIDIA_DRIVER_CAPABILITIES=video,utility")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert {"nvidia0", "nvidia1", "fake nvidia0", "fake nvidia1"} <= set(lines)
    assert "libnvidia-encode.so.1" in lines and "libcuda.so.1" not in lines


@pytest.mark.parametrize("value", [None, "void"])
def test_unset_or_void_injects_nothing(user, fake, busybox_sqsh, value):
    env = gpu_env(user, fake) if value is None else gpu_env(user, fake, NVIDIA_VISIBLE_DEVICES=value)
    result = start(user, busybox_sqsh, env)
    assert result.returncode == 0, result.stderr
    assert "nvidia" not in result.stdout.replace("nvidia-smi", "")  # only "nvidia-smi: not found"


def test_missing_gpu_is_one_line_error(user, fake, busybox_sqsh):
    result = start(user, busybox_sqsh, gpu_env(user, fake, NVIDIA_VISIBLE_DEVICES="0,5"))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("pyenroot: error:")]
    assert len(errors) == 1 and "GPU 5" in errors[0] and "does not exist" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_cuda_requirement_mismatch(user, fake, busybox_sqsh):
    env = gpu_env(user, fake, NVIDIA_VISIBLE_DEVICES="all", NVIDIA_REQUIRE_CUDA="cuda>=13.0")
    result = start(user, busybox_sqsh, env, script="true")
    assert result.returncode != 0
    assert "cuda>=13.0" in result.stderr and "CUDA 12.4" in result.stderr, result.stderr
    assert "NVIDIA_DISABLE_REQUIRE" in result.stderr
    assert start(user, busybox_sqsh, {**env, "NVIDIA_DISABLE_REQUIRE": "1"}, script="true").returncode == 0


def test_ld_cache_lists_the_driver(user, fake, busybox_sqsh):
    """The host's static ldconfig, bound into the container, reads the private cache the hook bound."""
    ldconfig = Path("/sbin/ldconfig")
    if not ldconfig.exists():
        pytest.skip("no ldconfig on this host")
    result = start(user, busybox_sqsh, gpu_env(user, fake, NVIDIA_VISIBLE_DEVICES="0"),
                   "--mount", f"{ldconfig}:/tmp/ldconfig:none:x-create=file,bind,ro",
                   script="/tmp/ldconfig -p")
    assert result.returncode == 0, result.stderr
    assert "libcuda.so.1 (libc6,x86-64) => /usr/local/nvidia/lib64/libcuda.so.1" in result.stdout


def test_ld_cache_matches_ldconfig(tmp_path):
    """Our writer's output reads back through glibc's own ldconfig exactly like the host cache."""
    host_cache = Path("/etc/ld.so.cache")
    if not host_cache.exists() or not Path("/sbin/ldconfig").exists():
        pytest.skip("no ld.so.cache or ldconfig on this host")
    copy = tmp_path / "cache"
    copy.write_bytes(ldcache.build(ldcache.parse(host_cache.read_bytes())))

    def listing(path: Path) -> list[str]:
        out = subprocess.run(["ldconfig", "-p", "-C", str(path)], capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines()[1:] if not line.startswith("Cache generated by")]

    assert listing(copy) == listing(host_cache)


def test_doctor_gpu_section(user, fake):
    result = user.pyenroot("doctor", "--gpu", env={"PYENROOT_NVIDIA_ROOT": str(fake.root)})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert DRIVER_VERSION in out and "CUDA 12.4" in out
    assert GPU_UUIDS[0] in out and "/dev/nvidia1" in out
    assert "user namespaces" not in out  # --gpu shows only the GPU section
    lines = {line.split()[1]: line for line in out.splitlines() if line.strip().startswith("capability")}
    assert "ok" in lines["compute"] and "libcuda.so" in lines["compute"]
    assert "missing" in lines["display"]  # the fake tree has no /dev/nvidia-modeset


def test_doctor_gpu_without_driver_fails(user):
    result = user.pyenroot("doctor", "--gpu", env={"PYENROOT_NVIDIA_ROOT": str(user.home / "nothing")})
    assert result.returncode == 1 and "no NVIDIA driver" in result.stdout


def test_doctor_without_gpu(user, tmp_path):
    result = user.pyenroot("doctor", env={"PYENROOT_NVIDIA_ROOT": str(user.home / "nothing")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "user namespaces" in result.stdout and "ok" in result.stdout
    assert "no NVIDIA driver" in result.stdout


def _compile(args: list[str]) -> None:
    subprocess.run(["gcc", *args], check=True, capture_output=True)


def test_dynamic_program_finds_the_driver_library(user, busybox_rootfs_dir, tmp_path):
    """A dynamically linked program in the container loads libnvidia-ml.so.1 from /usr/local/nvidia/lib64,
    a directory the loader only knows from the private ld.so.cache."""
    import shutil

    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    fake = make_fake_driver(user.home / "fake-nvidia")
    build = tmp_path / "build"
    build.mkdir()
    (build / "nvml.c").write_text("int fake_nvml_answer(void) { return 42; }\n")
    (build / "main.c").write_text('#include <stdio.h>\nint fake_nvml_answer(void);\n'
                                  'int main(void) { printf("answer %d\\n", fake_nvml_answer()); return 0; }\n')
    library = fake.root / "usr/lib/x86_64-linux-gnu" / f"libnvidia-ml.so.{DRIVER_VERSION}"
    _compile(["-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1", "-o", str(library), str(build / "nvml.c")])
    library.chmod(0o755)
    _compile(["-o", str(build / "usenvml"), str(build / "main.c"), str(library)])
    rootfs = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs_dir, rootfs, symlinks=True)
    for needed in ("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"):
        (rootfs / needed.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(needed).resolve(), rootfs / needed.lstrip("/"))
    shutil.copy(build / "usenvml", rootfs / "bin/usenvml")
    image = user.home / "dynamic.sqsh"
    subprocess.run(["mksquashfs", str(rootfs), str(image), "-all-root", "-no-progress", "-quiet"], check=True,
                   capture_output=True)
    image.chmod(0o644)
    without = start(user, image, gpu_env(user, fake, NVIDIA_VISIBLE_DEVICES="void"), script="/bin/usenvml")
    assert without.returncode != 0 and "libnvidia-ml.so.1" in without.stderr
    result = start(user, image, gpu_env(user, fake, NVIDIA_VISIBLE_DEVICES="0", NVIDIA_DRIVER_CAPABILITIES="utility"),
                   script="/bin/usenvml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "answer 42"


def test_image_environment_and_host_precedence(user, fake, busybox_rootfs_dir, tmp_path):
    """The image asks for all GPUs (as CUDA images do); the host's value and the Slurm allocation win."""
    import shutil

    rootfs = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs_dir, rootfs, symlinks=True)
    (rootfs / "etc/environment").write_text("PATH=/usr/bin:/bin\nNVIDIA_VISIBLE_DEVICES=all\n"
                                            "NVIDIA_DRIVER_CAPABILITIES=compute,utility\n")
    image = user.home / "cuda-like.sqsh"
    subprocess.run(["mksquashfs", str(rootfs), str(image), "-all-root", "-no-progress", "-quiet"], check=True,
                   capture_output=True)
    image.chmod(0o644)
    show = "cat /dev/nvidia[0-9] 2>/dev/null; echo PATH=$PATH"
    from_image = start(user, image, gpu_env(user, fake), script=show)
    assert from_image.returncode == 0, from_image.stderr
    assert "fake nvidia0" in from_image.stdout and "fake nvidia1" in from_image.stdout
    assert "PATH=/usr/bin:/bin:/usr/local/nvidia/bin" in from_image.stdout
    host = start(user, image, gpu_env(user, fake, NVIDIA_VISIBLE_DEVICES="0"), script=show)
    assert host.returncode == 0, host.stderr
    assert "fake nvidia0" in host.stdout and "fake nvidia1" not in host.stdout
    slurm = start(user, image, gpu_env(user, fake, SLURM_JOB_ID="77", SLURM_JOB_GPUS="1"), script=show)
    assert slurm.returncode == 0, slurm.stderr
    assert "fake nvidia1" in slurm.stdout and "fake nvidia0" not in slurm.stdout
    outside = start(user, image, gpu_env(user, fake, SLURM_JOB_ID="77", SLURM_JOB_GPUS="1",
                                         NVIDIA_VISIBLE_DEVICES="0"), script="true")
    assert outside.returncode != 0 and "not allocated to this Slurm job" in outside.stderr


def test_named_container_is_not_changed_by_the_driver(user, fake, busybox_sqsh):
    """Starting a created container with GPUs leaves no driver files in its root filesystem."""
    assert user.pyenroot("create", "-n", "gpubox", str(busybox_sqsh)).returncode == 0
    root = user.home / ".local/share/enroot/gpubox"
    # A first start without GPUs lets the other hooks leave what they leave (passwd, localtime, ...).
    assert user.pyenroot("start", "gpubox", "true", env=gpu_env(user, fake)).returncode == 0
    before = {str(p.relative_to(root)) for p in root.rglob("*")}
    result = user.pyenroot("start", "gpubox", "sh", "-c", "ls /usr/local/nvidia/lib64",
                           env=gpu_env(user, fake, NVIDIA_VISIBLE_DEVICES="all"))
    assert result.returncode == 0, result.stderr
    assert "libcuda.so.1" in result.stdout.split()
    added = {str(p.relative_to(root)) for p in root.rglob("*")} - before
    # Only empty mount points can remain: the tmpfs directory, the cache file, the firmware files.
    assert not any("libcuda" in path or "nvidia-smi" in path for path in added), added
    assert all((root / path).is_dir() or (root / path).stat().st_size == 0 for path in added), added


def test_library_cache_planted_by_another_user_is_refused(user, other_user, fake, busybox_sqsh):
    """The hook reuses its ld.so.cache-HASH files by name: in a directory another user owns, it must refuse
    them (and name the directory) instead of binding them over the container's /etc/ld.so.cache."""
    assert user.pyenroot("create", "-n", "gpucache", str(busybox_sqsh)).returncode == 0
    env = gpu_env(user, fake, NVIDIA_VISIBLE_DEVICES="0")
    first = user.pyenroot("start", "gpucache", "true", env=env)
    assert first.returncode == 0, first.stderr
    cache = user.home / ".run/enroot/nvidia"
    names = [p.name for p in cache.glob("ld.so.cache-*")]
    assert names
    shutil.rmtree(cache)
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    for name in names:
        (cache / name).write_bytes(b"planted")
    other_user.give(cache)
    result = user.pyenroot("start", "gpucache", "cat", "/etc/ld.so.cache", env=env)
    assert "planted" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("pyenroot: error:")]
    assert result.returncode != 0 and len(errors) == 1 and str(cache) in errors[0], result.stderr
