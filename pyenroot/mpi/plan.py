"""From the site's MPI description (SYSCONF/mpi.conf) and the container's libraries to mounts (pure).

A site declares its tuned MPI once; a job asks for it with PYENROOT_MPI=host. Only the MPICH ABI is supported
(libmpi.so.12 / libmpich.so.12, which MPICH, Intel MPI, Cray MPICH and MVAPICH keep), so a program built
against the image's MPICH runs with the site's. Where things go in the container, and why:
- every host library and dependency is bound read-only into a tmpfs at /usr/local/pyenroot-mpi/lib, and a
  private copy of the container's ld.so.cache with those entries added is bound over /etc/ld.so.cache (as the
  GPU hook does): nothing is written into the image;
- a library of the container with the name of a host MPI library gets the host's bound over it, for programs
  that load it by path (RPATH) rather than through the cache;
- configuration directories (a fabric provider's) and devices keep their host paths.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

from pyenroot.errors import RuntimeStartError
from pyenroot.gpu import ldcache
from pyenroot.record import factory, record
from pyenroot.runtime.fstab import format_line

SITE_FILE = "mpi.conf"
SETTING = "PYENROOT_MPI"
LIB_DIR = "/usr/local/pyenroot-mpi/lib"
LD_CACHE = "/etc/ld.so.cache"
READONLY_FILE = "x-create=file,bind,ro,nosuid,nodev"
KEYWORDS = ("abi", "library", "dependency", "directory", "device", "env")
MPICH_ABI = 12  # the MPICH ABI: the MPI library's soname is libmpi.so.12 or libmpich.so.12
MPI_LIBRARY_NAMES = ("libmpi", "libmpich")
_SONAME = re.compile(r"^(lib[\w+-]*?)\.so\.(\d+)((?:\.\d+)*)$")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MpiError(RuntimeStartError):
    reference = "mpi"


@record(frozen=True)
class SiteMpi:
    libraries: tuple[str, ...]  # the MPI libraries (the ABI is checked against them)
    dependencies: tuple[str, ...] = ()  # what they need: fabric libraries, providers, ...
    directories: tuple[str, ...] = ()  # configuration directories, bound at the same path
    devices: tuple[str, ...] = ()  # /dev/infiniband, /dev/cxi0, ...: bound where the node has them
    environ: dict[str, str] = factory(dict)
    abi: str = "mpich"


@record
class MpiPlan:
    mounts: list[str] = factory(list)  # fstab lines, in order
    environ: dict[str, str] = factory(dict)
    files: dict[Path, bytes] = factory(dict)  # host files to write before mounting


def requested(environ: dict[str, str], host_environ: dict[str, str]) -> bool:
    """PYENROOT_MPI from the container's environment (--container-env, -e) or the settings: host or none."""
    value = environ.get(SETTING) or host_environ.get(SETTING) or ""
    if value in ("", "none"):
        return False
    if value != "host":
        raise MpiError(f"{SETTING}={value}: expected 'host' or 'none'")
    return True


# --- the site file -----------------------------------------------------------------------------------------


def _absolute(value: str, where: str) -> str:
    if not value.startswith("/"):
        raise MpiError(f"{where}: {value!r} is not an absolute path")
    return str(PurePosixPath(value))


def parse_site_file(text: str, origin: str) -> SiteMpi:
    """`KEYWORD VALUE` lines, # comments: abi, library, dependency, directory, device (repeatable), env
    NAME=VALUE. Raises MpiError naming the file and line."""
    paths: dict[str, list[str]] = {key: [] for key in ("library", "dependency", "directory", "device")}
    environ: dict[str, str] = {}
    abi = "mpich"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{origin} line {number}"
        keyword, _, value = line.partition(" ")
        value = value.strip()
        if keyword not in KEYWORDS or not value:
            raise MpiError(f"{where}: expected one of {', '.join(KEYWORDS)} and a value, got {line!r}")
        if keyword == "env":
            name, sep, setting = value.partition("=")
            if not sep or not _ENV_NAME.fullmatch(name):
                raise MpiError(f"{where}: env needs NAME=VALUE, got {value!r}")
            environ[name] = setting
        elif keyword == "abi":
            abi = value
        else:
            paths[keyword].append(_absolute(value, where))
    if abi != "mpich":
        raise MpiError(f"{origin}: abi {abi!r} is not supported (only mpich: the libmpi.so.12 family)")
    if not paths["library"]:
        raise MpiError(f"{origin}: names no MPI library ('library PATH')")
    return SiteMpi(tuple(paths["library"]), tuple(paths["dependency"]), tuple(paths["directory"]),
                   tuple(paths["device"]), environ, abi)


# --- names and the ABI check -------------------------------------------------------------------------------


def soname_parts(file_name: str) -> tuple[str, int] | None:
    """("libmpich", 12) for libmpich.so.12 or libmpich.so.12.2.2; None for a name without a numbered .so."""
    match = _SONAME.match(file_name)
    return (match.group(1), int(match.group(2))) if match else None


def soname(file_name: str) -> str:
    """What the loader asks for: libmpich.so.12 for libmpich.so.12.2.2 (the name itself when unnumbered)."""
    parts = soname_parts(file_name)
    return f"{parts[0]}.so.{parts[1]}" if parts else file_name


def _mpi_abi(file_name: str) -> int | None:
    parts = soname_parts(file_name)
    return parts[1] if parts and parts[0] in MPI_LIBRARY_NAMES else None


def check_abi(host_versions: dict[str, str], container_versions: dict[str, str]) -> None:
    """Library name -> its real file name (libmpich.so.12 -> libmpich.so.12.2.2), on the host (the site's
    libraries) and in the container (its cache). Refuses a site MPI outside the MPICH ABI, and a container
    MPI of another ABI, naming both."""
    host_mpi = sorted((name, real) for name, real in host_versions.items() if _mpi_abi(name) is not None)
    if not host_mpi:
        raise MpiError(f"the site's MPI libraries ({', '.join(sorted(host_versions))}) include no libmpi.so.N "
                       "or libmpich.so.N", hint=f"name the MPI library in SYSCONF/{SITE_FILE}")
    for name, real in host_mpi:
        if _mpi_abi(name) != MPICH_ABI:
            raise MpiError(f"the site's MPI {real} is not of the MPICH ABI (libmpi.so.{MPICH_ABI})")
    host_real = host_mpi[0][1]
    for name, real in sorted(container_versions.items()):
        abi = _mpi_abi(name)
        if abi is not None and abi != MPICH_ABI:
            raise MpiError(f"the container's MPI {real} (ABI {abi}) does not match the host's {host_real} "
                           f"(MPICH ABI {MPICH_ABI})",
                           hint=f"use an image built with MPICH or another libmpi.so.{MPICH_ABI} MPI, or unset "
                                f"{SETTING}")


# --- mounts --------------------------------------------------------------------------------------------------


def make_plan(site: SiteMpi, host_names: dict[str, str], container_cache: bytes | None,
              container_libraries: dict[str, str], present: set[str], cache_dir: Path, flags: int) -> MpiPlan:
    """host_names: each host library/dependency -> the name the loader asks for; container_libraries: name ->
    path inside the container (its cache); present: which of the site's directories and devices this node has;
    flags: the loader's cache flags for this architecture."""
    plan = MpiPlan(environ=dict(site.environ))
    # The tmpfs comes first so that the binds below it land in memory, not in the image.
    plan.mounts.append(format_line("tmpfs", str(PurePosixPath(LIB_DIR).parent), "tmpfs",
                                   "x-create=dir,mode=755,nosuid,nodev"))
    entries = []
    for host_file in (*site.libraries, *site.dependencies):
        name = host_names[host_file]
        target = f"{LIB_DIR}/{name}"
        plan.mounts.append(format_line(host_file, target, "none", READONLY_FILE))
        entries.append(ldcache.CacheEntry(name, target, flags))
        if host_file in site.libraries and name in container_libraries:
            plan.mounts.append(format_line(host_file, container_libraries[name], "none", "bind,ro,nosuid,nodev"))
    data = ldcache.merged(container_cache, entries)
    # Named by content, like the GPU hook's: identical starts share one file, never rewritten while in use.
    cache = cache_dir / f"ld.so.cache-{hashlib.sha256(data).hexdigest()[:24]}"
    plan.files[cache] = data
    plan.mounts.append(format_line(str(cache), LD_CACHE, "none", READONLY_FILE + ",noexec"))
    for directory in site.directories:
        if directory in present:
            plan.mounts.append(format_line(directory, directory, "none", "x-create=dir,rbind,ro,nosuid,nodev"))
    for device in site.devices:
        if device in present:
            plan.mounts.append(format_line(device, device, "none", "x-create=auto,rbind,rw,nosuid,noexec"))
    return plan
