"""Find the host's NVIDIA driver: version, GPUs, device nodes, libraries, binaries, firmware.

Everything is looked up below one root (the setting PYENROOT_NVIDIA_ROOT, `/` by default) so that tests can
point discovery at a fake driver tree. The parsers are pure functions; `discover()` does the reading.
nvidia-smi runs only when the caller needs what only it knows (CUDA version, MIG devices, compute capability).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from pathlib import Path

from pyenroot import tools
from pyenroot.gpu import ldcache
from pyenroot.record import factory, record, replace

# Driver libraries by capability, as file name stems: a file matches when its name is STEM.so.<anything>.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "utility": ("libnvidia-ml", "libnvidia-cfg"),
    "compute": ("libcuda", "libcudadebugger", "libnvidia-opencl", "libnvidia-ptxjitcompiler",
                "libnvidia-fatbinaryloader", "libnvidia-allocator", "libnvidia-compiler", "libnvidia-nvvm",
                "libnvidia-gpucomp", "libnvidia-pkcs11", "libnvidia-pkcs11-openssl3"),
    "video": ("libvdpau_nvidia", "libnvidia-encode", "libnvidia-opticalflow", "libnvcuvid"),
    "graphics": ("libnvidia-eglcore", "libnvidia-glcore", "libnvidia-tls", "libnvidia-glsi", "libnvidia-fbc",
                 "libnvidia-ifr", "libnvidia-rtcore", "libnvoptix", "libGLX_nvidia", "libEGL_nvidia",
                 "libGLESv2_nvidia", "libGLESv1_CM_nvidia", "libnvidia-glvkspirv", "libnvidia-cbl",
                 "libnvidia-egl-gbm", "libnvidia-egl-wayland"),
    "display": ("libnvidia-wayland-client",),
}
BINARIES: dict[str, tuple[str, ...]] = {
    "utility": ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced"),
    "compute": ("nvidia-cuda-mps-control", "nvidia-cuda-mps-server"),
}
# Device nodes besides the GPUs' own /dev/nvidiaN, and the capabilities that need them.
CONTROL_DEVICES: dict[str, tuple[str, ...]] = {
    "nvidiactl": ("*",),
    "nvidia-uvm": ("*",),
    "nvidia-uvm-tools": ("*",),
    "nvidia-modeset": ("display", "graphics"),
    "gdrdrv": ("compute",),
    "nvidia-caps-imex-channels": ("compute",),
}
LIBRARY_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "usr/lib/powerpc64le-linux-gnu",
                "usr/lib64", "usr/lib", "lib64", "lib", "usr/local/nvidia/lib64", "usr/local/nvidia/lib",
                "usr/lib/nvidia", "usr/lib64/nvidia", "usr/lib/i386-linux-gnu", "usr/lib32", "lib32")
BINARY_DIRS = ("usr/bin", "usr/sbin", "bin", "sbin", "usr/local/bin", "usr/local/nvidia/bin")
# Sockets and pipes of driver daemons: host path below the root -> path in the container.
IPC_PATHS: dict[str, tuple[str, tuple[str, ...]]] = {
    "run/nvidia-persistenced/socket": ("/run/nvidia-persistenced/socket", ("utility", "compute")),
    "tmp/nvidia-mps": ("/tmp/nvidia-mps", ("compute",)),
}
SMI_TIMEOUT = 60

_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 21: "ppc64le", 3: "i386"}


@record(frozen=True)
class Mig:
    gpu_index: int
    index: int  # position under its GPU in `nvidia-smi -L`
    uuid: str


@record(frozen=True)
class Gpu:
    index: int  # nvidia-smi/CUDA order: by PCI bus id
    minor: int  # /dev/nvidia<minor>
    bus_id: str
    uuid: str | None = None
    model: str | None = None
    arch: str | None = None  # compute capability, e.g. 9.0
    migs: tuple[Mig, ...] = ()

    @property
    def brand(self) -> str | None:
        return brand_of(self.model)


@record(frozen=True)
class Library:
    path: Path  # the real file on the host (symlinks resolved)
    names: tuple[str, ...]  # every name the host gives it: libcuda.so.535.104.05, libcuda.so.1, ...
    capability: str
    bits: int  # 64, or 32 for compat32 libraries
    flags: int  # ld.so cache flags (architecture)


@record(frozen=True)
class Driver:
    root: Path
    version: str | None
    cuda_version: str | None = None
    gpus: tuple[Gpu, ...] = ()
    devices: dict[str, Path] = factory(dict)  # control devices that exist: name -> host path
    caps: dict[str, Path] = factory(dict)  # MIG capability (gpu0/gi1/access) -> host device
    libraries: tuple[Library, ...] = ()
    binaries: dict[str, Path] = factory(dict)  # name -> host path
    firmware: tuple[Path, ...] = ()
    ipc: dict[str, Path] = factory(dict)  # container path -> host path

    @property
    def present(self) -> bool:
        return self.version is not None

    def device_node(self, gpu: Gpu) -> Path:
        return self.root / "dev" / f"nvidia{gpu.minor}"


# --- pure parsers -----------------------------------------------------------------------------------------


def parse_proc_version(text: str) -> str | None:
    """`NVRM version: NVIDIA UNIX [Open ]Kernel Module [for x86_64]  535.104.05  ...` -> 535.104.05."""
    match = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else None


def parse_gpu_information(text: str) -> dict[str, str]:
    """A /proc/driver/nvidia/gpus/<bus>/information file as `Key: value` pairs."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def parse_smi_header(text: str) -> tuple[str | None, str | None]:
    """Driver and CUDA version from the banner of a plain `nvidia-smi`."""
    driver = re.search(r"Driver Version:\s*([0-9][0-9.]*)", text)
    cuda = re.search(r"CUDA Version:\s*([0-9][0-9.]*)", text)
    return (driver.group(1) if driver else None), (cuda.group(1) if cuda else None)


def parse_smi_list(text: str) -> list[tuple[int, str, str | None, list[tuple[int, str]]]]:
    """`nvidia-smi -L` -> [(index, model, uuid, [(mig index, mig uuid), ...])]."""
    gpus: list[tuple[int, str, str | None, list[tuple[int, str]]]] = []
    for line in text.splitlines():
        gpu = re.match(r"^GPU (\d+): (.*?)(?: \(UUID: (GPU-[^)]+)\))?\s*$", line)
        if gpu:
            gpus.append((int(gpu.group(1)), gpu.group(2).strip(), gpu.group(3), []))
            continue
        mig = re.match(r"^\s+MIG .*Device\s+(\d+): \(UUID: (MIG-[^)]+)\)", line)
        if mig and gpus:
            gpus[-1][3].append((int(mig.group(1)), mig.group(2)))
    return gpus


def parse_smi_query(text: str) -> list[list[str]]:
    """CSV rows of `nvidia-smi --query-gpu=... --format=csv,noheader`."""
    return [[cell.strip() for cell in row] for row in csv.reader(text.splitlines()) if row]


def parse_mig_minors(text: str) -> dict[str, int]:
    """/proc/driver/nvidia-caps/mig-minors: `gpu0/gi1/ci0/access 12` -> {name: minor}."""
    minors = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            minors[parts[0]] = int(parts[1])
    return minors


def brand_of(model: str | None) -> str | None:
    """The NVML brand a model name suggests (for NVIDIA_REQUIRE_* `brand=`)."""
    if not model:
        return None
    name = model.lower()
    for brand in ("tesla", "quadro", "geforce", "titan", "nvs", "grid"):
        if brand in name:
            return brand
    if re.search(r"\b([abhlvtk]\d{1,3}[a-z]?|gh200|gb200|b200|a800|h800)\b", name):
        return "tesla"  # data-centre parts no longer carry the Tesla name
    if re.search(r"\brtx a\d{4}\b", name):
        return "quadro"  # workstation parts no longer carry the Quadro name
    return "nvidia"


def matching_stem(name: str, stems: Iterable[str]) -> str | None:
    for stem in stems:
        if name.startswith(stem + ".so"):
            rest = name[len(stem) + 3:]
            if rest == "" or rest.startswith("."):
                return stem
    return None


def elf_info(head: bytes) -> tuple[int, str] | None:
    """(bits, machine) from the first 20 bytes of an ELF file, or None if it is not ELF."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    bits = 32 if head[4] == 1 else 64
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return bits, _ELF_MACHINES.get(machine, "unknown")


def native_flags() -> int:
    return ldcache.FLAGS_BY_MACHINE.get(os.uname().machine, ldcache.FLAG_ELF_LIBC6)


# --- reading the host ---------------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _under(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


def find_binary(root: Path, name: str) -> Path | None:
    for directory in BINARY_DIRS:
        candidate = root / directory / name
        # os.path.isfile: a directory we may not search is "not found", not an error (Path.is_file raises)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_smi(root: Path, *args: str) -> str | None:
    """Output of nvidia-smi ARGS, or None when it is missing or fails."""
    smi = find_binary(root, "nvidia-smi")
    if smi is None:
        return None
    try:
        result = tools.run([str(smi), *args], timeout=SMI_TIMEOUT, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    except OSError:  # TimeoutError too
        return None
    return result.stdout if result.returncode == 0 else None


def read_gpus_from_proc(root: Path) -> list[Gpu]:
    base = root / "proc/driver/nvidia/gpus"
    try:
        bus_ids = sorted(p.name for p in base.iterdir() if p.is_dir())
    except OSError:
        return []
    gpus = []
    for index, bus_id in enumerate(bus_ids):
        info = parse_gpu_information(_read(base / bus_id / "information") or "")
        minor = info.get("Device Minor", "")
        uuid = info.get("GPU UUID")
        gpus.append(Gpu(index=index, minor=int(minor) if minor.isdigit() else index, bus_id=bus_id,
                        uuid=uuid if uuid and uuid.startswith("GPU-") else None, model=info.get("Model")))
    return gpus


def read_gpus_from_smi(root: Path) -> list[Gpu]:
    """When /proc/driver/nvidia/gpus is not readable: ask nvidia-smi (minor numbers then follow the index)."""
    text = run_smi(root, "--query-gpu=index,uuid,pci.bus_id,name", "--format=csv,noheader")
    gpus = []
    for row in parse_smi_query(text or ""):
        if len(row) >= 4 and row[0].isdigit():
            gpus.append(Gpu(index=int(row[0]), minor=int(row[0]), bus_id=row[2].lower(), uuid=row[1],
                            model=row[3]))
    return gpus


def _with_smi_details(root: Path, gpus: list[Gpu], want_migs: bool, want_arch: bool) -> list[Gpu]:
    if want_migs:
        listed = {index: (model, uuid, migs) for index, model, uuid, migs in parse_smi_list(
            run_smi(root, "-L") or "")}
        gpus = [replace(g, uuid=g.uuid or listed[g.index][1], model=g.model or listed[g.index][0],
                        migs=tuple(Mig(g.index, i, u) for i, u in listed[g.index][2]))
                if g.index in listed else g for g in gpus]
    if want_arch:
        rows = parse_smi_query(run_smi(root, "--query-gpu=index,compute_cap", "--format=csv,noheader") or "")
        archs = {int(r[0]): r[1] for r in rows if len(r) >= 2 and r[0].isdigit() and r[1][:1].isdigit()}
        gpus = [replace(g, arch=archs.get(g.index)) for g in gpus]
    return gpus


def read_caps(root: Path) -> dict[str, Path]:
    minors = parse_mig_minors(_read(root / "proc/driver/nvidia-caps/mig-minors") or "")
    caps = {}
    for name, minor in minors.items():
        node = root / "dev/nvidia-caps" / f"nvidia-cap{minor}"
        if node.exists():
            caps[name] = node
    return caps


def _library_candidates(root: Path) -> dict[Path, tuple[set[str], int | None]]:
    """Every driver library file found: real path -> (names that lead to it, ld cache flags if known)."""
    stems = [s for group in LIBRARIES.values() for s in group]
    found: dict[Path, tuple[set[str], int | None]] = {}

    def add(name: str, path: Path, flags: int | None) -> None:
        try:
            real = path.resolve(strict=True)
        except OSError:
            return
        if not real.is_file() or (root != Path("/") and not real.is_relative_to(root.resolve())):
            return
        names, known = found.setdefault(real, (set(), flags))
        names.update({name, real.name})
        if known is None and flags is not None:
            found[real] = (names, flags)

    try:
        cache = ldcache.parse((root / "etc/ld.so.cache").read_bytes())
    except (OSError, ldcache.CacheFormatError):
        cache = []
    for entry in cache:
        if entry.hwcaps_subdir is None and matching_stem(entry.name, stems):
            add(entry.name, _under(root, entry.path), entry.flags)
    for directory in LIBRARY_DIRS:
        try:
            names = sorted(os.listdir(root / directory))
        except OSError:
            continue
        for name in names:
            if matching_stem(name, stems):
                add(name, root / directory / name, None)
    return found


def _describe_library(real: Path, names: set[str], flags: int | None) -> tuple[str, int, int] | None:
    stems = {stem: capability for capability, group in LIBRARIES.items() for stem in group}
    stem = matching_stem(real.name, stems) or next((matching_stem(n, stems) for n in names
                                                    if matching_stem(n, stems)), None)
    if stem is None:
        return None
    try:
        with real.open("rb") as handle:
            elf = elf_info(handle.read(20))
    except OSError:
        elf = None
    if elf is not None:
        bits, machine = elf
        flags = flags if flags is not None else ldcache.FLAGS_BY_MACHINE.get(machine, ldcache.FLAG_ELF_LIBC6)
    else:  # not ELF (a test's fake library): judge by the directory
        bits = 32 if re.search(r"(i386|lib32)", str(real.parent)) else 64
        flags = flags if flags is not None else (ldcache.FLAG_ELF_LIBC6 if bits == 32 else native_flags())
    return stems[stem], bits, flags


def select_libraries(found: dict[Path, tuple[set[str], int | None]], version: str | None) -> list[Library]:
    """One file per library stem and word size, preferring the file versioned like the running driver
    (a host may keep libraries of an older driver next to the current ones)."""
    stems = {stem: capability for capability, group in LIBRARIES.items() for stem in group}
    chosen: dict[tuple[str, int], Library] = {}
    for real, (names, flags) in found.items():
        described = _describe_library(real, names, flags)
        if described is None:
            continue
        capability, bits, lib_flags = described
        stem = matching_stem(real.name, stems) or ""
        library = Library(real, tuple(sorted(names)), capability, bits, lib_flags)
        key = (stem, bits)
        current = chosen.get(key)
        versioned = version is not None and real.name.endswith(f".so.{version}")
        if current is None or (versioned and not current.path.name.endswith(f".so.{version}")):
            chosen[key] = library
    return sorted(chosen.values(), key=lambda lib: (lib.capability, lib.bits, lib.path.name))


def _cached_cuda_version(cache_dir: Path | None, version: str | None) -> str | None:
    if cache_dir is None or version is None:
        return None
    text = _read(cache_dir / f"cuda-version-{version}")
    return text.strip() if text and re.fullmatch(r"\d+(\.\d+)*\s*", text) else None


def _remember_cuda_version(cache_dir: Path | None, version: str | None, cuda: str | None) -> None:
    """nvidia-smi can take a second without the persistence daemon: keep its answer per driver version."""
    if cache_dir is None or version is None or cuda is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = cache_dir / f".cuda-version-{version}.{os.getpid()}"
        temp.write_text(cuda + "\n")
        temp.replace(cache_dir / f"cuda-version-{version}")
    except OSError:
        pass  # only a cache: the next start asks nvidia-smi again


def discover(root: Path | str = "/", *, want_cuda: bool = False, want_migs: bool = False,
             want_arch: bool = False, cache_dir: Path | None = None) -> Driver:
    """What the host offers. Costly nvidia-smi runs happen only for the facts asked for; with `cache_dir`,
    the CUDA version is asked once per driver version."""
    root = Path(root)
    version = parse_proc_version(_read(root / "proc/driver/nvidia/version") or "")
    cuda = _cached_cuda_version(cache_dir, version) if want_cuda else None
    if (want_cuda and cuda is None) or version is None:
        smi_driver, cuda = parse_smi_header(run_smi(root) or "")
        version = version or smi_driver
        _remember_cuda_version(cache_dir, version, cuda)
    if version is None:
        return Driver(root, None)
    gpus = read_gpus_from_proc(root) or read_gpus_from_smi(root)
    gpus = _with_smi_details(root, gpus, want_migs, want_arch)
    devices = {name: root / "dev" / name for name in CONTROL_DEVICES if (root / "dev" / name).exists()}
    binaries = {name: path for group in BINARIES.values() for name in group
                if (path := find_binary(root, name)) is not None}
    firmware_dir = root / "lib/firmware/nvidia" / version
    firmware = tuple(sorted(p for p in firmware_dir.rglob("*") if p.is_file())) if firmware_dir.is_dir() else ()
    ipc = {target: root / source for source, (target, _) in IPC_PATHS.items() if (root / source).exists()}
    return Driver(root, version, cuda, tuple(gpus), devices, read_caps(root),
                  tuple(select_libraries(_library_candidates(root), version)), binaries, firmware, ipc)
