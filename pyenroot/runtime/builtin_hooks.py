"""The standard hooks, in Python: home, shadow, localtime, devices, cgroups and aptfix.

Each takes a `HookContext` (the container's root seen from the host, its environment so far, the caller's
ids) and either edits files in the root filesystem or asks for mounts. Paths inside the image are resolved
with `mounter.host_path`, so a hostile symlink in the image cannot redirect a write to the host.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import pwd
import stat
import sys
from pathlib import Path

from pyenroot.atomic import write_atomically
from pyenroot.config import is_true
from pyenroot.runtime.fstab import format_line
from pyenroot.runtime.hookapi import HookContext
from pyenroot.runtime.mounter import host_path

OVERFLOW_ID = 65534


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return ""


# ---------------------------------------------------------------- shadow


def prepare(outer_uid: int, outer_gid: int) -> None:
    """The host lookups of these hooks, made ahead (hooks.prepare) and kept for when the hooks run: the
    caller's account and group (a directory service may take milliseconds) and the cgroup mounts."""
    _account(outer_uid)
    _group_name(outer_gid)
    _cgroup_mounts()


@functools.cache
def _account(uid: int) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        return None


def _host_identity(ctx: HookContext) -> tuple[str, str, str, str]:
    """(user name, gecos, home, shell) of the caller on the host, and the group name."""
    entry = _account(ctx.outer_uid)
    if entry is not None:
        name, gecos, home, shell = entry.pw_name, entry.pw_gecos, entry.pw_dir, entry.pw_shell
    else:
        name, gecos, home, shell = f"user{ctx.outer_uid}", "", ctx.host_environ.get("HOME", "/"), "/bin/sh"
    return name, gecos.replace(":", " "), home, shell


@functools.cache
def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"group{gid}"


def merge_accounts(existing: str, first: list[str], drop_names: set[str], drop_ids: set[str]) -> str:
    """`first` lines, then the existing ones minus duplicates by name or id and the names in `drop_names`."""
    names = {line.split(":", 1)[0] for line in first}
    ids = {line.split(":")[2] for line in first}
    kept = list(first)
    for line in existing.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or not line.strip():
            continue
        if fields[0] in names or fields[0] in drop_names or fields[2] in ids or fields[2] in drop_ids:
            continue
        kept.append(line)
        names.add(fields[0])
    return "".join(line + "\n" for line in kept)


def shadow(ctx: HookContext) -> None:
    """Put root, nobody and the caller (with the caller's outer ids) into the image's passwd and group, and the
    caller into its shadow file (PAM's account check, e.g. sshd's, refuses a user that file lacks)."""
    etc = host_path(ctx.rootfs, "/etc")
    if not etc.is_dir() or not os.access(etc, os.W_OK):
        return
    name, gecos, home, shell = _host_identity(ctx)
    if not host_path(ctx.rootfs, shell).is_file():
        shell = "/bin/sh"
    group = _group_name(ctx.outer_gid)
    passwd_path, group_path = host_path(ctx.rootfs, "/etc/passwd"), host_path(ctx.rootfs, "/etc/group")
    passwd, groups = _read(passwd_path), _read(group_path)
    default_root = "root:x:0:0:root:/root:/bin/sh"
    root_line = next((line for line in passwd.splitlines() if line.startswith("root:")), default_root)
    users = [root_line, f"nobody:x:{OVERFLOW_ID}:{OVERFLOW_ID}:nobody:/nonexistent:/bin/false"]
    group_lines = ["root:x:0:", f"nogroup:x:{OVERFLOW_ID}:"]
    if ctx.outer_uid != 0:
        users.append(f"{name}:x:{ctx.outer_uid}:{ctx.outer_gid}:{gecos}:{home}:{shell}")
    if ctx.outer_gid != 0:
        group_lines.append(f"{group}:x:{ctx.outer_gid}:")
    for path, old, new in ((passwd_path, passwd, merge_accounts(passwd, users, {"_apt"}, set())),
                           (group_path, groups, merge_accounts(groups, group_lines, set(), set()))):
        if new != old:  # usually only the first start of a container changes anything
            write_atomically(path, new, 0o644)
    if ctx.outer_uid != 0:
        _add_shadow_entry(host_path(ctx.rootfs, "/etc/shadow"), name)


def _add_shadow_entry(path: Path, name: str) -> None:
    """The caller in an existing /etc/shadow: no password ('*', so not a locked account), no ageing."""
    if not path.is_file():
        return  # an image without a shadow file keeps its accounts in passwd only
    entries = _read(path)
    if any(line.split(":", 1)[0] == name for line in entries.splitlines()):
        return
    if entries and not entries.endswith("\n"):
        entries += "\n"
    write_atomically(path, entries + f"{name}:*::0:99999:7:::\n", stat.S_IMODE(path.stat().st_mode))


# ---------------------------------------------------------------- home


def home(ctx: HookContext) -> None:
    """With ENROOT_MOUNT_HOME, bind the caller's home (at /root when remapped to root) and set HOME."""
    if not is_true(ctx.host_environ.get("ENROOT_MOUNT_HOME")):
        return
    source = ctx.host_environ.get("HOME") or _host_identity(ctx)[2]
    target = "/root" if ctx.remap_root else source
    ctx.add_mount(format_line(source, target, "none", "x-create=dir,rbind,rw,nosuid"))
    ctx.set_env("HOME", target)


# ---------------------------------------------------------------- localtime


def localtime(ctx: HookContext) -> None:
    """Give the container the host's time zone when the host's /etc/localtime is a link to a zone file."""
    host = Path("/etc/localtime")
    if not host.is_symlink():
        return
    link = os.readlink(host)
    zone = host.resolve()
    target = host_path(ctx.rootfs, "/etc/localtime", follow=False)
    if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
        return
    if target.is_symlink() and os.readlink(target) == link and host_path(ctx.rootfs, link).exists():
        return  # already done by an earlier start
    if link.startswith("/") and zone.is_file():
        zone_inside = host_path(ctx.rootfs, link)
        if not zone_inside.exists():
            with contextlib.suppress(OSError):  # a read-only or odd image keeps the bare link
                zone_inside.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                zone_inside.write_bytes(zone.read_bytes())
    temp = target.parent / f".localtime.{os.getpid()}"
    temp.unlink(missing_ok=True)
    temp.symlink_to(link)
    os.replace(temp, target)


# ---------------------------------------------------------------- aptfix


def aptfix(ctx: HookContext) -> None:
    """Debian images as root in a one-uid namespace: apt cannot drop to its _apt sandbox user."""
    if not ctx.remap_root or not host_path(ctx.rootfs, "/etc/debian_version").is_file():
        return
    confdir = host_path(ctx.rootfs, "/etc/apt/apt.conf.d")
    if confdir.is_dir() and os.access(confdir, os.W_OK):
        write_atomically(confdir / "pyenroot-aptfix", 'APT::Sandbox::User "root";\n', 0o644)


# ---------------------------------------------------------------- cgroups


@functools.cache
def _cgroup_mounts() -> dict[str, str]:
    """Hierarchy key ('' for cgroup2, else the controller list or name=...) -> mount point on the host (the
    first mount of each: the container's own binds, made later, come after the host's in mountinfo)."""
    found: dict[str, str] = {}
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(fields) < 5 or len(extra) < 3:
            continue
        if extra[0] == "cgroup2":
            found.setdefault("", fields[4])
        elif extra[0] == "cgroup":
            options = [o for o in extra[2].split(",") if o not in ("rw", "ro")]
            for option in options:
                found.setdefault(option, fields[4])
    return found


def cgroups(ctx: HookContext) -> None:
    """Show the container only its own cgroups: bind each hierarchy's own subtree over the hierarchy."""
    mounts = _cgroup_mounts()
    step = "/.." if ctx.host_environ.get("SLURM_STEP_ID") else ""
    seen = set()
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        key = controllers.split(",")[0] if controllers else ""
        mountpoint = mounts.get(key)
        if not mountpoint or path == "/" or mountpoint in seen or not mountpoint.startswith("/sys/fs/cgroup"):
            continue
        seen.add(mountpoint)
        ctx.add_mount(format_line(f"{mountpoint}{path}{step}", mountpoint, "none",
                                  "x-create=dir,rbind,nosuid,noexec,nodev,ro,nofail,silent"))


# ---------------------------------------------------------------- devices


def _device_lines(ctx: HookContext, new_ipc: bool) -> list[str]:
    lines = ["none /dev none x-detach,nofail,silent",
             "tmpfs /dev tmpfs x-create=dir,nosuid,noexec,mode=755"]
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        lines.append(f"/dev/{name} /dev/{name} none x-create=file,bind,rw,nosuid,noexec")
    lines.append("devpts /dev/pts devpts x-create=dir,nosuid,noexec,newinstance,ptmxmode=0666,mode=0620")
    if new_ipc:
        lines += ["tmpfs /dev/shm tmpfs x-create=dir,nosuid,nodev,mode=1777",
                  "mqueue /dev/mqueue mqueue x-create=dir,nosuid,nodev,noexec,nofail,silent"]
    else:
        lines += ["/dev/shm /dev/shm none x-create=dir,rbind,nosuid,nodev",
                  "/dev/mqueue /dev/mqueue none x-create=dir,rbind,nosuid,nodev,noexec,nofail,silent"]
    lines += ["/dev/hugepages /dev/hugepages none x-create=dir,rbind,nosuid,nodev,nofail,silent",
              "/dev/log /dev/log none x-create=file,bind,nofail,silent"]
    if sys.stdin is not None and os.isatty(0):
        lines.append(format_line(os.ttyname(0), "/dev/console", "none", "x-create=file,bind,nofail,silent"))
    return lines


def devices(ctx: HookContext) -> None:
    """With ENROOT_RESTRICT_DEV (or a new IPC namespace), replace the host's /dev with a minimal one."""
    restrict = is_true(ctx.host_environ.get("ENROOT_RESTRICT_DEV"))
    new_ipc = is_true(ctx.host_environ.get("ENROOT_UNSHARE_IPC"))
    if not (restrict or new_ipc):
        return
    for line in _device_lines(ctx, new_ipc):
        ctx.mount_now(line)
    dev = host_path(ctx.rootfs, "/dev")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
        link = dev / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target)


# ---------------------------------------------------------------- slurm-pmi


def slurm_pmi(ctx: HookContext) -> None:
    """In a Slurm step: the step's PMIx/PMI variables, and the PMIx server's directories at the same paths (the
    task's PMI_FD and ranks stay the task's own: see pyenroot.runtime.pmi)."""
    from pyenroot.runtime import pmi

    app_dir = pmi.app_directory(ctx.host_environ, ctx.outer_uid)
    setup = pmi.pmi_setup(ctx.host_environ, app_dir if app_dir and os.path.isdir(app_dir) else None)
    if setup is None:
        return
    for name, value in setup.environ.items():
        ctx.set_env(name, value)
    for directory in setup.directories:
        if os.path.isdir(directory):  # a variable naming what this node lacks is the client's problem to report
            ctx.add_mount(format_line(directory, directory, "none", "x-create=dir,rbind,rw,nosuid,nodev"))
