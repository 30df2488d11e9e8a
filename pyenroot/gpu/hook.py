"""The standard GPU hook (98-nvidia): NVIDIA devices and driver for containers that ask for them.

It replaces enroot's call of nvidia-container-cli: the request comes from the NVIDIA_* variables, the driver
is discovered on the host, and the result is a list of fstab lines (mounted by the launcher after the hooks)
and environment changes. See pyenroot.gpu.plan for where things go in the container.
"""

from __future__ import annotations

from pathlib import Path

from pyenroot import trust
from pyenroot.atomic import write_atomically
from pyenroot.config import default_runtime_dir
from pyenroot.gpu import driver as gpu_driver
from pyenroot.gpu import plan as gpu_plan
from pyenroot.gpu import request as gpu_request
from pyenroot.runtime.hookapi import HookContext

ROOT_SETTING = "PYENROOT_NVIDIA_ROOT"


def driver_root(host_environ: dict[str, str]) -> Path:
    return Path(host_environ.get(ROOT_SETTING) or "/")


def cache_dir(host_environ: dict[str, str], uid: int, name: str = "nvidia", what: str = "the GPU cache directory"
              ) -> Path:
    """Where the private ld.so.cache files live: the per-user runtime directory, made and checked, since its
    files are reused by name and nobody else may write there. The hook runs in the user namespace, where the
    user's files show as the current uid; the directories above were checked before it was entered. (The MPI
    hook keeps its files the same way, in another subdirectory.)"""
    runtime = host_environ.get("ENROOT_RUNTIME_PATH") or default_runtime_dir(uid)
    return trust.private_dir(Path(runtime) / name, what, ancestors=False)


def _read_container_cache(rootfs: Path) -> bytes | None:
    try:
        return (rootfs / "etc/ld.so.cache").read_bytes()
    except OSError:
        return None  # no cache in the image (static images such as busybox): ours holds just the driver


def write_files(files: dict[Path, bytes]) -> None:
    """Write each file once, atomically (temp file + rename), so concurrent starts never see half a file."""
    for path, data in files.items():
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, data, 0o644)


def apply_plan(ctx: HookContext, plan, error: type[Exception]) -> None:
    """Carry out a GPU or MPI plan: its cache files written (a failure becomes `error`), then its mounts and
    environment handed to the start."""
    try:
        write_files(plan.files)
    except OSError as exc:
        raise error(f"cannot write the container's library cache {exc.filename}: {exc.strerror}",
                    hint="check that ENROOT_RUNTIME_PATH is writable") from None
    for line in plan.mounts:
        ctx.add_mount(line)
    for name, value in plan.environ.items():
        ctx.set_env(name, value)


def nvidia_hook(ctx: HookContext) -> None:
    request = gpu_request.from_environ(ctx.environ, ctx.host_environ)
    if request is None:
        return
    needs = gpu_request.needed_facts(request.requirements)
    wants_mig = any(s.startswith("MIG-") or ":" in s for s in request.selectors)
    files_dir = cache_dir(ctx.host_environ, ctx.outer_uid)
    driver = gpu_driver.discover(driver_root(ctx.host_environ), want_cuda="cuda" in needs, want_migs=wants_mig,
                                 want_arch="arch" in needs, cache_dir=files_dir)
    plan = gpu_plan.make_plan(request, driver, container_cache=_read_container_cache(ctx.rootfs),
                              container_path=ctx.environ.get("PATH"), cache_dir=files_dir)
    apply_plan(ctx, plan, gpu_request.GpuError)
