"""Running containers of this user, found through /proc (mount namespaces, root mounts), and stopping one.
`@record` values (pyenroot/record.py): a Slurm step looks for its running container here."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from pyenroot import octal
from pyenroot.containers.names import data_path
from pyenroot.errors import StorageError
from pyenroot.names import is_valid_name
from pyenroot.record import record

UNKNOWN_NAME = "<unknown>"


@record(frozen=True)
class MountEntry:
    """The fields of one /proc/PID/mountinfo line that locate a mount's source."""

    device: str  # major:minor
    root: str  # path of the mount's root within its file system
    mountpoint: str
    fstype: str = ""  # after the " - " separator: tmpfs, ext4, nfs4, lustre...


@record(frozen=True)
class ContainerProcess:
    """A process running in a container's mount namespace (the lowest PID of that namespace)."""

    name: str  # UNKNOWN_NAME: not started from ENROOT_DATA_PATH (e.g. straight from a .sqsh image)
    pid: int
    state: str
    started: float  # seconds since the epoch
    mntns: int
    userns: int
    command: str


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5:
            after = fields.index("-", 6) + 1 if "-" in fields[6:] else len(fields)
            fstype = fields[after] if after < len(fields) else ""
            entries.append(MountEntry(fields[2], octal.unescape(fields[3]), octal.unescape(fields[4]), fstype))
    return entries


def root_mount(entries: list[MountEntry]) -> MountEntry | None:
    """The mount a process sees as `/` (the last one mounted there is on top)."""
    found = [e for e in entries if e.mountpoint == "/"]
    return found[-1] if found else None


def containing_mount(entries: list[MountEntry], path: str) -> MountEntry | None:
    """The mount that holds `path` (an absolute, resolved path): the longest mount point above it."""
    best = None
    for entry in entries:
        point = entry.mountpoint.rstrip("/") or "/"
        inside = path == point or path.startswith(point + "/") or point == "/"
        if inside and (best is None or len(point) >= len(best.mountpoint.rstrip("/") or "/")):
            best = entry
    return best


def data_location(entries: list[MountEntry], data: str) -> MountEntry:
    """Where ENROOT_DATA_PATH lives, as (device, path within that file system)."""
    mount = containing_mount(entries, data)
    if mount is None:
        return MountEntry("", data, data)
    point = mount.mountpoint.rstrip("/") or "/"
    relative = os.path.relpath(data, point)
    inner = os.path.normpath(os.path.join(mount.root, relative)) if relative != "." else mount.root
    return MountEntry(mount.device, inner, data)


def container_name_of(root: MountEntry, data: MountEntry) -> str | None:
    """The container name if a process's root mount is a directory directly inside the data path."""
    if data.device and root.device != data.device:
        return None
    parent, _, name = root.root.rstrip("/").rpartition("/")
    if (parent or "/") != (data.root.rstrip("/") or "/") or not name:
        return None
    return name if is_valid_name(name) else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()
    except OSError:
        return None


def _ns_inode(pid: int | str, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def parse_stat(text: str) -> tuple[str, int]:
    """(state letter, start time in clock ticks after boot) from a /proc/PID/stat line."""
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def _boot_time() -> float:
    for line in (_read("/proc/stat") or "").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def running_containers(settings) -> list[ContainerProcess]:
    """Containers of this user that are running: one process per mount namespace, found through /proc.

    A process belongs to a container if its root is a directory of ENROOT_DATA_PATH or holds the `/.lock`
    file that start puts there; processes sharing our own mount namespace never do.
    """
    own_mnt = _ns_inode("self", "mnt")
    data = data_location(parse_mountinfo(_read("/proc/self/mountinfo") or ""),
                         os.path.realpath(data_path(settings, create=False)))
    ticks = os.sysconf("SC_CLK_TCK")
    boot = _boot_time()
    own_pidns = _ns_inode("self", "pid")
    best: dict[int, tuple[tuple[bool, bool, int], ContainerProcess]] = {}
    for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
        process = _container_process(pid, own_mnt, data, ticks, boot)
        if process is None:
            continue
        # Show the process a user means: with a PID namespace the container's command (the one `exec` should
        # join) rather than the launcher waiting in the host's or pyenroot's init; a FUSE daemon serving the
        # image (pivot_root moved its root too) only when nothing else is left.
        rank = (_ns_inode(pid, "pid") == own_pidns, _is_helper(pid), pid)
        if process.mntns not in best or rank < best[process.mntns][0]:
            best[process.mntns] = (rank, process)
    return sorted((p for _, p in best.values()), key=lambda p: (p.name, p.pid))


# Processes that serve a container rather than run in it: FUSE daemons, and the init of a --pid container
# (launcher.INIT_PROCESS_NAME).
_HELPERS = frozenset({"squashfuse", "squashfuse_ll", "fuse-overlayfs", "pyenroot-init"})


def _is_helper(pid: int) -> bool:
    return (_read(f"/proc/{pid}/comm") or "").strip() in _HELPERS


def _container_process(pid: int, own_mnt: int | None, data: MountEntry, ticks: int,
                       boot: float) -> ContainerProcess | None:
    mntns = _ns_inode(pid, "mnt")
    if mntns is None or mntns == own_mnt:
        return None
    mountinfo = _read(f"/proc/{pid}/mountinfo")
    root = root_mount(parse_mountinfo(mountinfo or ""))
    if root is None:
        return None
    name = container_name_of(root, data)
    if name is None:
        if not os.path.lexists(f"/proc/{pid}/root/.lock"):
            return None
        name = UNKNOWN_NAME
    stat_text = _read(f"/proc/{pid}/stat")
    if stat_text is None:
        return None
    state, start_ticks = parse_stat(stat_text)
    cmdline = (_read(f"/proc/{pid}/cmdline") or "").rstrip("\0").replace("\0", " ")
    return ContainerProcess(name, pid, state, boot + start_ticks / ticks, mntns, _ns_inode(pid, "user") or 0,
                            cmdline)


def running_pids(settings, name: str) -> list[int]:
    """PIDs (one per mount namespace) of the running instances of container `name`."""
    return [p.pid for p in running_containers(settings) if p.name == name]


STOP_GRACE_S = 5.0  # between SIGTERM and SIGKILL
STOP_LIMIT_S = 30.0  # after SIGKILL: a process in uninterruptible sleep may take a while


def _members(namespaces: set[int]) -> list[int]:
    """Every process in one of the mount namespaces `namespaces`: a container's own processes and those that
    joined it (Slurm tasks, `exec`)."""
    pids = (int(p) for p in os.listdir("/proc") if p.isdigit())
    return [pid for pid in pids if _ns_inode(pid, "mnt") in namespaces]


def _signal_all(pids: list[int], number: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, number)
            os.kill(pid, signal.SIGCONT)  # a stopped process (a Slurm step's anchor) acts on SIGTERM only then


def _wait_gone(namespaces: set[int], limit: float) -> list[int]:
    deadline = time.monotonic() + limit
    while (left := _members(namespaces)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def stop_container(settings, name: str) -> int:
    """Stop every process of running container `name` (SIGTERM, then SIGKILL after STOP_GRACE_S), so that a
    removed container cannot live on in namespaces nobody can name. Returns how many processes it had."""
    namespaces = {p.mntns for p in running_containers(settings) if p.name == name}
    if not namespaces:
        return 0
    members = _members(namespaces)
    _signal_all(members, signal.SIGTERM)
    left = _wait_gone(namespaces, STOP_GRACE_S)
    if left:
        _signal_all(left, signal.SIGKILL)
        left = _wait_gone(namespaces, STOP_LIMIT_S)
    if left:
        raise StorageError(f"cannot stop container {name}: PID {left[0]} is still running",
                           hint=f"stop it (kill -KILL {left[0]}) and try again")
    return len(members)
