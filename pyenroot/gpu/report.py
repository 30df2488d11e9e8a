"""What `pyenroot doctor --gpu` says about the discovered driver (pure: a Driver in, lines out)."""

from __future__ import annotations

from pyenroot.gpu.driver import BINARIES, LIBRARIES, Driver
from pyenroot.gpu.request import CAPABILITIES


def capability_status(driver: Driver) -> dict[str, tuple[bool, str]]:
    """For each capability: can a container get it here, and what it would get (or what is missing)."""
    status: dict[str, tuple[bool, str]] = {}
    for capability in CAPABILITIES:
        if capability == "compat32":
            names = [lib.path.name for lib in driver.libraries if lib.bits == 32]
            status[capability] = (bool(names), ", ".join(names) or "no 32-bit driver libraries")
            continue
        libraries = [lib.path.name for lib in driver.libraries if lib.capability == capability and lib.bits == 64]
        binaries = [name for name in BINARIES.get(capability, ()) if name in driver.binaries]
        found = libraries + binaries
        if capability == "display" and "nvidia-modeset" not in driver.devices:
            status[capability] = (False, "no /dev/nvidia-modeset")
        elif capability == "display":
            status[capability] = (True, ", ".join(["/dev/nvidia-modeset", *found]))
        elif found:
            status[capability] = (True, ", ".join(found))
        else:
            wanted = ", ".join(f"{stem}.so" for stem in LIBRARIES[capability][:3])
            status[capability] = (False, f"none of {wanted}, ... found")
    return status


def gpu_lines(driver: Driver) -> list[tuple[str, str, str]]:
    """(item, state, detail) rows for the GPU section."""
    root_note = f" (below {driver.root})" if str(driver.root) != "/" else ""
    if not driver.present:
        return [("driver", "none", f"no NVIDIA driver{root_note}: no /proc/driver/nvidia/version, no nvidia-smi")]
    rows = [("driver", "ok", f"{driver.version} (CUDA {driver.cuda_version or 'unknown'}){root_note}")]
    for gpu in driver.gpus:
        node = driver.device_node(gpu)
        state = "ok" if node.exists() else "missing"
        detail = f"{gpu.model or 'unknown model'}  {gpu.uuid or 'no UUID'}  {gpu.bus_id}  {node}"
        rows.append((f"GPU {gpu.index}", state, detail))
        rows.extend((f"  MIG {gpu.index}:{mig.index}", "ok", mig.uuid) for mig in gpu.migs)
    if not driver.gpus:
        rows.append(("GPUs", "none", "the driver is loaded but lists no GPU"))
    control = " ".join(str(path) for path in driver.devices.values())
    rows.append(("control devices", "ok" if "nvidiactl" in driver.devices else "missing", control or "none"))
    for capability, (ok, detail) in capability_status(driver).items():
        rows.append((f"capability {capability}", "ok" if ok else "missing", detail))
    if driver.firmware:
        rows.append(("firmware", "ok", f"{len(driver.firmware)} file(s) in {driver.firmware[0].parent}"))
    return rows
