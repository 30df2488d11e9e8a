"""A fake NVIDIA driver tree for tests on machines without a GPU (point PYENROOT_NVIDIA_ROOT at it).

Device nodes are plain files whose content names them, so a test can `cat /dev/nvidia0` in a container and
see which node it got; libraries are small files with the driver's naming and symlinks; nvidia-smi is a
shell script that prints what the real one would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DRIVER_VERSION = "550.54.15"
CUDA_VERSION = "12.4"
GPU_UUIDS = ("GPU-11111111-2222-3333-4444-555555555555", "GPU-66666666-7777-8888-9999-000000000000")
MIG_UUID = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
# stem -> soname suffix (as the real driver names them)
LIBRARIES = {"libcuda": "1", "libnvidia-ml": "1", "libnvidia-ptxjitcompiler": "1", "libnvidia-encode": "1",
             "libGLX_nvidia": "0"}
LIB64 = "usr/lib/x86_64-linux-gnu"
LIB32 = "usr/lib/i386-linux-gnu"


@dataclass(frozen=True)
class FakeDriver:
    root: Path
    version: str
    cuda: str


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _library(directory: Path, stem: str, soname: str, version: str) -> None:
    real = directory / f"{stem}.so.{version}"
    _write(real, f"fake {stem} {version} {directory.name}\n")
    for link in (f"{stem}.so.{soname}", f"{stem}.so"):
        if not (directory / link).exists():
            (directory / link).symlink_to(real.name)


def _smi_script(version: str, cuda: str, mig: bool) -> str:
    mig_line = f'  MIG 1g.18gb     Device  0: (UUID: {MIG_UUID})\n' if mig else ""
    return f"""#!/bin/sh
case "$*" in
  -L) printf 'GPU 0: NVIDIA H200 (UUID: {GPU_UUIDS[0]})\\n{mig_line}GPU 1: NVIDIA H200 (UUID: {GPU_UUIDS[1]})\\n' ;;
  *compute_cap*) printf '0, 9.0\\n1, 9.0\\n' ;;
  *query-gpu*) printf '0, {GPU_UUIDS[0]}, 00000000:17:00.0, NVIDIA H200\\n'
               printf '1, {GPU_UUIDS[1]}, 00000000:2A:00.0, NVIDIA H200\\n' ;;
  "") printf '| NVIDIA-SMI {version}   Driver Version: {version}   CUDA Version: {cuda}     |\\n' ;;
  *) echo "fake nvidia-smi: unsupported arguments: $*" >&2; exit 2 ;;
esac
"""


def make_fake_driver(root: Path, *, version: str = DRIVER_VERSION, cuda: str = CUDA_VERSION,
                     mig: bool = False, with_proc: bool = True) -> FakeDriver:
    """Two H200s (minors 0 and 1), control devices, libraries for several capabilities, nvidia-smi."""
    if with_proc:
        _write(root / "proc/driver/nvidia/version",
               f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  Tue Mar  5 22:23:56 UTC 2024\n"
               "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
        for minor, (bus, uuid) in enumerate(zip(("0000:17:00.0", "0000:2a:00.0"), GPU_UUIDS, strict=True)):
            _write(root / "proc/driver/nvidia/gpus" / bus / "information",
                   f"Model: \t\t NVIDIA H200\nIRQ:   \t\t 42\nGPU UUID: \t {uuid}\nVideo BIOS: \t 96.00.a5.00.01\n"
                   f"Bus Type: \t PCIe\nDMA Size: \t 52 bits\nDevice Minor: \t {minor}\nBus Location: \t {bus}\n")
        if mig:
            _write(root / "proc/driver/nvidia-caps/mig-minors",
                   "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\ngpu1/gi1/access 21\n")
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        _write(root / "dev" / name, f"fake {name}\n", 0o666)
    if mig:
        for minor in (12, 13, 21):
            _write(root / "dev/nvidia-caps" / f"nvidia-cap{minor}", f"fake cap {minor}\n", 0o444)
    for stem, soname in LIBRARIES.items():
        _library(root / LIB64, stem, soname, version)
    _library(root / LIB32, "libcuda", "1", version)
    _write(root / LIB64 / "libcuda.so.470.57.02", "stale library of an older driver\n")
    _write(root / "usr/bin/nvidia-smi", _smi_script(version, cuda, mig), 0o755)
    for tool in ("nvidia-debugdump", "nvidia-cuda-mps-control"):
        _write(root / "usr/bin" / tool, f"#!/bin/sh\necho fake {tool}\n", 0o755)
    _write(root / "lib/firmware/nvidia" / version / "gsp_ga10x.bin", "fake firmware\n")
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o755)
    return FakeDriver(root, version, cuda)
