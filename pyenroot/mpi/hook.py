"""The standard host MPI hook (60-mpi), off by default: with PYENROOT_MPI=host, the site's MPI and fabric.

It reads the site file (SYSCONF/mpi.conf), checks that the container's MPI has the site's ABI, and asks for
the mounts pyenroot.mpi.plan decides; the files it writes (a private ld.so.cache) go to the runtime
directory, as the GPU hook's do.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyenroot.gpu import ldcache
from pyenroot.gpu.driver import native_flags
from pyenroot.gpu.hook import apply_plan, cache_dir
from pyenroot.mpi import plan as mpi_plan
from pyenroot.runtime.hookapi import HookContext
from pyenroot.runtime.mounter import host_path


def site_file(host_environ: dict[str, str]) -> Path:
    return Path(host_environ.get("ENROOT_SYSCONF_PATH") or "/etc/enroot") / mpi_plan.SITE_FILE


def load_site(path: Path) -> mpi_plan.SiteMpi:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise mpi_plan.MpiError(f"{mpi_plan.SETTING}=host, but this site describes no MPI ({path} is missing)",
                                hint=f"ask the administrators for a {mpi_plan.SITE_FILE}, or unset "
                                     f"{mpi_plan.SETTING}") from None
    except OSError as exc:
        raise mpi_plan.MpiError(f"cannot read {path}: {exc.strerror}") from None
    return mpi_plan.parse_site_file(text, str(path))


def _host_names(site: mpi_plan.SiteMpi, origin: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Each host file -> the name the loader asks for; and the MPI libraries' names -> their real files."""
    names, versions = {}, {}
    for path in (*site.libraries, *site.dependencies):
        if not os.path.isfile(path):
            raise mpi_plan.MpiError(f"{origin}: {path} does not exist on this node")
        names[path] = mpi_plan.soname(os.path.basename(path))
        if path in site.libraries:
            versions[names[path]] = os.path.basename(os.path.realpath(path))
    return names, versions


def _container_libraries(ctx: HookContext, cache: bytes | None, flags: int) -> dict[str, str]:
    """Name -> path inside the container, from the image's ld.so.cache (its own architecture only)."""
    if not cache:
        return {}
    try:
        entries = ldcache.parse(cache)
    except ldcache.CacheFormatError:
        return {}
    return {entry.name: entry.path for entry in entries if entry.flags == flags and not entry.hwcaps_subdir}


def _real_name(ctx: HookContext, path: str) -> str:
    return os.path.basename(os.path.realpath(host_path(ctx.rootfs, path)))


def mpi_hook(ctx: HookContext) -> None:
    if not mpi_plan.requested(ctx.environ, ctx.host_environ):
        return
    path = site_file(ctx.host_environ)
    site = load_site(path)
    host_names, host_versions = _host_names(site, path)
    try:
        container_cache: bytes | None = host_path(ctx.rootfs, mpi_plan.LD_CACHE).read_bytes()
    except OSError:
        container_cache = None
    flags = native_flags()
    libraries = _container_libraries(ctx, container_cache, flags)
    mpi_plan.check_abi(host_versions, {name: _real_name(ctx, where) for name, where in libraries.items()
                                       if mpi_plan.soname_parts(name) and name.startswith(mpi_plan.MPI_LIBRARY_NAMES)})
    present = {p for p in (*site.directories, *site.devices) if os.path.exists(p)}
    files_dir = cache_dir(ctx.host_environ, ctx.outer_uid, "mpi", "the MPI cache directory")
    plan = mpi_plan.make_plan(site, host_names, container_cache, libraries, present, files_dir, flags)
    apply_plan(ctx, plan, mpi_plan.MpiError)
