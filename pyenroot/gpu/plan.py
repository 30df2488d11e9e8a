"""From a GPU request and the discovered driver to mounts and environment changes (pure).

Where things go in the container, and why:
- GPU device nodes keep their names (/dev/nvidiaN, /dev/nvidiactl, ...): programs open them by name.
- Driver libraries and binaries are bound read-only into a tmpfs at /usr/local/nvidia/{lib64,lib,bin}: nothing
  is written into the image, and NVIDIA's CUDA images already have those directories in their search paths.
- The libraries are made findable for every image by a private copy of the container's own ld.so.cache with
  the driver's entries added, bound over /etc/ld.so.cache. No ldconfig has to run inside the container (many
  images have none, and it could not see the libraries before the mounts are made anyway), LD_LIBRARY_PATH is
  left alone, and the image's cache file is not modified.
"""

from __future__ import annotations

from pathlib import Path

from pyenroot.gpu import ldcache
from pyenroot.gpu.driver import BINARIES, CONTROL_DEVICES, IPC_PATHS, Driver, Gpu, Mig
from pyenroot.gpu.request import Facts, GpuError, GpuRequest, unmet_requirements
from pyenroot.record import factory, record
from pyenroot.runtime.fstab import format_line

DRIVER_ROOT = "/usr/local/nvidia"
LIB64_DIR = f"{DRIVER_ROOT}/lib64"
LIB32_DIR = f"{DRIVER_ROOT}/lib"
BIN_DIR = f"{DRIVER_ROOT}/bin"
LD_CACHE = "/etc/ld.so.cache"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEVICE_OPTIONS = "x-create=file,bind,rw,nosuid,noexec"  # no nodev: the nodes must stay usable
READONLY_FILE = "x-create=file,bind,ro,nosuid,nodev"
READONLY_DATA = "x-create=file,bind,ro,nosuid,nodev,noexec"


@record(frozen=True)
class Selection:
    gpu: Gpu
    mig: Mig | None = None


@record
class GpuPlan:
    mounts: list[str] = factory(list)  # fstab lines, in order
    environ: dict[str, str] = factory(dict)  # variables to set in the container
    files: dict[Path, bytes] = factory(dict)  # host files to write before mounting
    selected: list[Selection] = factory(list)

    def bind(self, source: Path | str, target: str, options: str) -> None:
        self.mounts.append(format_line(str(source), target, "none", options))


# --- which GPUs -------------------------------------------------------------------------------------------


def _describe(gpus: tuple[Gpu, ...] | list[Gpu]) -> str:
    return ", ".join(str(g.index) for g in gpus) or "none"


def allocated_gpus(request: GpuRequest, driver: Driver) -> list[Gpu]:
    """The GPUs this container may use: all of the host's, or only the Slurm job's."""
    if request.allocated is None:
        return list(driver.gpus)
    wanted = {token.lower() for token in request.allocated}
    return [g for g in driver.gpus if str(g.minor) in wanted or (g.uuid or "").lower() in wanted]


def _find(token: str, driver: Driver) -> Selection | None:
    lowered = token.lower()
    for gpu in driver.gpus:
        if token.isdigit() and gpu.index == int(token):
            return Selection(gpu)
        if gpu.uuid and gpu.uuid.lower() == lowered:
            return Selection(gpu)
        for mig in gpu.migs:
            if mig.uuid.lower() == lowered or f"{gpu.index}:{mig.index}" == token:
                return Selection(gpu, mig)
    return None


def select_gpus(request: GpuRequest, driver: Driver) -> list[Selection]:
    allowed = allocated_gpus(request, driver)
    if request.all_devices:
        return [Selection(g) for g in allowed]
    selections: list[Selection] = []
    for token in request.selectors:
        found = _find(token, driver)
        if found is None:
            raise GpuError(f"GPU {token} requested by NVIDIA_VISIBLE_DEVICES does not exist on this host "
                           f"(GPUs: {_describe(driver.gpus)})",
                           hint="see 'pyenroot doctor --gpu' for the GPUs and their UUIDs")
        if found.gpu not in allowed:
            raise GpuError(f"GPU {token} is not allocated to this Slurm job (allocated: {_describe(allowed)})",
                           hint="request it from Slurm (--gpus) or use NVIDIA_VISIBLE_DEVICES=all")
        if found not in selections:
            selections.append(found)
    return selections


def check_requirements(request: GpuRequest, driver: Driver, selections: list[Selection]) -> None:
    gpus = [s.gpu for s in selections]
    facts = Facts(cuda=driver.cuda_version, driver=driver.version,
                  brands=tuple(b for g in gpus if (b := g.brand)), archs=tuple(a for g in gpus if (a := g.arch)))
    unmet = unmet_requirements(request.requirements, facts)
    if unmet:
        first = unmet[0]
        host = [f"driver {driver.version or 'unknown'}", f"CUDA {driver.cuda_version or 'unknown'}"]
        if facts.brands:
            host.append(f"brand {','.join(sorted(set(facts.brands)))}")
        if facts.archs:
            host.append(f"arch {','.join(sorted(set(facts.archs)))}")
        raise GpuError(f"the container requires {first.text} ({first.variable}) but this host has "
                       f"{', '.join(host)}",
                       hint="use a host with a newer driver, or set NVIDIA_DISABLE_REQUIRE=1 to start anyway")


# --- mounts -----------------------------------------------------------------------------------------------


def _device_mounts(plan: GpuPlan, request: GpuRequest, driver: Driver, selections: list[Selection]) -> None:
    for selection in selections:
        node = driver.device_node(selection.gpu)
        if not node.exists():
            raise GpuError(f"device node {node} of GPU {selection.gpu.index} does not exist",
                           hint="the driver's device nodes are created by nvidia-modprobe or at boot")
        target = f"/dev/nvidia{selection.gpu.minor}"
        if format_line(str(node), target, "none", DEVICE_OPTIONS) not in plan.mounts:
            plan.bind(node, target, DEVICE_OPTIONS)
        if selection.mig is not None:
            # A MIG device is reached through its GPU's node plus the capability nodes of its instances.
            prefix = f"gpu{selection.gpu.minor}/"
            for name, cap in sorted(driver.caps.items()):
                line = format_line(str(cap), f"/dev/nvidia-caps/{cap.name}", "none", DEVICE_OPTIONS)
                if name.startswith(prefix) and line not in plan.mounts:
                    plan.mounts.append(line)
    for wanted, name in ((request.mig_config, "config"), (request.mig_monitor, "monitor")):
        if wanted and name in driver.caps:
            cap = driver.caps[name]
            plan.bind(cap, f"/dev/nvidia-caps/{cap.name}", DEVICE_OPTIONS)
    for name, host_path in driver.devices.items():
        needed_by = CONTROL_DEVICES[name]
        if "*" in needed_by or request.capabilities & set(needed_by):
            plan.bind(host_path, f"/dev/{name}", DEVICE_OPTIONS)


def _library_mounts(plan: GpuPlan, request: GpuRequest, driver: Driver) -> list[ldcache.CacheEntry]:
    entries = []
    for library in driver.libraries:
        if library.capability not in request.capabilities:
            continue
        if library.bits == 32 and "compat32" not in request.capabilities:
            continue
        directory = LIB32_DIR if library.bits == 32 else LIB64_DIR
        for name in library.names:
            plan.bind(library.path, f"{directory}/{name}", READONLY_FILE)
            entries.append(ldcache.CacheEntry(name, f"{directory}/{name}", library.flags))
    return entries


def _binary_mounts(plan: GpuPlan, request: GpuRequest, driver: Driver) -> bool:
    bound = False
    for capability, names in BINARIES.items():
        if capability not in request.capabilities:
            continue
        for name in names:
            if name in driver.binaries:
                plan.bind(driver.binaries[name], f"{BIN_DIR}/{name}", READONLY_FILE)
                bound = True
    return bound


def _container_path(host_path: Path, root: Path) -> str:
    return "/" + str(host_path.relative_to(root)).lstrip("/")


def _support_mounts(plan: GpuPlan, request: GpuRequest, driver: Driver) -> None:
    if request.capabilities & {"utility", "compute"}:
        for firmware in driver.firmware:  # GSP firmware: read by the driver's user-space tools
            plan.bind(firmware, _container_path(firmware, driver.root), READONLY_DATA)
    targets = {target: needs for target, needs in IPC_PATHS.values()}
    for target, host_path in driver.ipc.items():
        if request.capabilities & set(targets.get(target, ())):
            if host_path.is_dir():
                plan.bind(host_path, target, "x-create=dir,bind,rw,nosuid,nodev,noexec")
            else:
                plan.bind(host_path, target, READONLY_DATA)


def _ld_cache(plan: GpuPlan, entries: list[ldcache.CacheEntry], container_cache: bytes | None,
              cache_dir: Path) -> None:
    import hashlib  # here: on a node without GPUs a CUDA image's start makes no plan, and needs no OpenSSL

    data = ldcache.merged(container_cache, entries)
    # Named by content: starts of the same image with the same driver share one file, and a file is never
    # rewritten while another container has it mounted.
    path = cache_dir / f"ld.so.cache-{hashlib.sha256(data).hexdigest()[:24]}"
    plan.files[path] = data
    plan.bind(path, LD_CACHE, READONLY_DATA)


def make_plan(request: GpuRequest, driver: Driver, *, container_cache: bytes | None,
              container_path: str | None, cache_dir: Path) -> GpuPlan:
    """Mounts and environment that give the container the requested GPUs and driver parts.

    A request for `all` (the default of NVIDIA's CUDA images) on a host without a driver gives nothing, so
    those images still run on CPU nodes; named GPUs without a driver are an error."""
    plan = GpuPlan()
    if not driver.present:
        if request.explicit:
            raise GpuError(f"NVIDIA_VISIBLE_DEVICES={','.join(request.selectors)} asks for GPUs, but no NVIDIA "
                           f"driver is loaded (no {driver.root / 'proc/driver/nvidia/version'})",
                           hint="run on a GPU node, or set NVIDIA_VISIBLE_DEVICES=void")
        return plan
    plan.selected = select_gpus(request, driver)
    check_requirements(request, driver, plan.selected)
    _device_mounts(plan, request, driver, plan.selected)
    driver_mounts_start = len(plan.mounts)
    entries = _library_mounts(plan, request, driver)
    has_binaries = _binary_mounts(plan, request, driver)
    if len(plan.mounts) > driver_mounts_start:
        # The tmpfs comes first so that the binds below it land in memory, not in the image.
        plan.mounts.insert(driver_mounts_start,
                           format_line("tmpfs", DRIVER_ROOT, "tmpfs", "x-create=dir,mode=755,nosuid,nodev"))
    if entries:
        _ld_cache(plan, entries, container_cache, cache_dir)
    _support_mounts(plan, request, driver)
    if has_binaries:
        # Images nearly always set PATH; for one that does not, start from the path container engines use.
        current = container_path or DEFAULT_PATH
        if BIN_DIR not in current.split(":"):
            plan.environ["PATH"] = f"{current}:{BIN_DIR}"
    return plan
