"""A container start as data: namespaces, id maps, ordered mounts, environment and the command (pure).

`build_plan` turns what the command line, the settings, the configuration dirs and the image say into a
`StartPlan`; `launcher.py` carries it out. Nothing here touches the kernel or the file system, so unit tests
check plans directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pyenroot.errors import ConfigError
from pyenroot.runtime import environ as envdialect
from pyenroot.runtime import fstab
from pyenroot.runtime.flags import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    MS_BIND,
    MS_DIRSYNC,
    MS_LAZYTIME,
    MS_MANDLOCK,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_NOSYMFOLLOW,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    MS_SHARED,
    MS_SILENT,
    MS_SLAVE,
    MS_STRICTATIME,
    MS_SYNCHRONOUS,
    MS_UNBINDABLE,
)

# option -> (flags to set, flags to clear)
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0), "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0), "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0), "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0), "mand": (MS_MANDLOCK, 0), "nomand": (0, MS_MANDLOCK),
    "noatime": (MS_NOATIME, 0), "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0), "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0), "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0), "nostrictatime": (0, MS_STRICTATIME),
    "lazytime": (MS_LAZYTIME, 0), "nolazytime": (0, MS_LAZYTIME),
    "nosymfollow": (MS_NOSYMFOLLOW, 0),
    "remount": (MS_REMOUNT, 0),
    "bind": (MS_BIND, 0), "rbind": (MS_BIND | MS_REC, 0),
}
_PROPAGATION: dict[str, int] = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC,
    "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC,
    "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
    "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | MS_REC,
}
# fstab words that mean nothing to mount(2).
_NOOP_OPTIONS = frozenset({"defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev",
                           "loud", "nofail", "silent", "x-move", "x-detach"})
CREATE_KINDS = ("dir", "file", "auto")


@dataclass(frozen=True)
class Mount:
    """One mount(2) call (plus the extras of enroot's dialect), with its target inside the container."""

    source: str
    target: str
    fstype: str | None
    flags: int  # MS_* flags of the first mount call
    data: str | None  # file-system specific options
    propagation: int = 0  # MS_PRIVATE/SLAVE/SHARED/UNBINDABLE (| MS_REC), applied by a separate call
    create: str | None = None  # "dir", "file" or "auto": create the target (mode 0000) if it is missing
    move: bool = False
    detach: bool = False
    nofail: bool = False
    silent: bool = False
    passno: int = 0
    origin: str = ""

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & MS_BIND)

    @property
    def remount_flags(self) -> int:
        """Flags a bind needs in a second (remount) call: the kernel ignores them on the bind itself."""
        extra = self.flags & ~(MS_BIND | MS_REC | MS_REMOUNT | MS_SILENT)
        return extra if self.is_bind and extra else 0


def mount_from_entry(entry: fstab.FstabEntry) -> Mount:
    """Translate an fstab entry's options into mount(2) arguments."""
    flags = 0
    propagation = 0
    data: list[str] = []
    create: str | None = None
    for option in entry.options:
        key, _, value = option.partition("=")
        if option in _FLAG_OPTIONS:
            on, off = _FLAG_OPTIONS[option]
            flags = (flags | on) & ~off
        elif option in _PROPAGATION:
            propagation = _PROPAGATION[option]
        elif key in ("x-create", "create"):  # `create=` is the first releases' spelling
            if value not in CREATE_KINDS:
                raise ConfigError(f"invalid fstab entry at {entry.origin}: {key} must be dir, file or auto")
            create = value
        elif option in _NOOP_OPTIONS:
            continue
        else:
            data.append(option)
    options = set(entry.options)
    silent = "silent" in options and "loud" not in options
    fstype = None if entry.fstype in ("none", "") else entry.fstype
    return Mount(
        source=entry.source, target=entry.target, fstype=fstype, flags=flags | (MS_SILENT if silent else 0),
        data=",".join(data) or None, propagation=propagation, create=create, move="x-move" in options,
        detach="x-detach" in options, nofail="nofail" in options, silent=silent, passno=entry.passno,
        origin=entry.origin,
    )


def config_files(builtin: Iterable[str], system: Iterable[str], user: Iterable[str]) -> list[tuple[str, str]]:
    """Order configuration files as (where, name): built-in and system files together in name order (enroot
    installs its standard files in the system directory), then user files in name order.

    A system or user file named like a built-in one replaces it, so an admin can switch a built-in off
    with an empty file.
    """
    system, user = set(system), set(user)
    overridden = system | user
    first = [(name, "builtin") for name in builtin if name not in overridden]
    first += [(name, "system") for name in system]
    return [(where, name) for name, where in sorted(first)] + [("user", name) for name in sorted(user)]


@dataclass(frozen=True)
class ImageFacts:
    """What the plan needs to know about the image (read from its root filesystem by the caller)."""

    environment: str = ""  # /etc/environment
    fstab: str = ""  # /etc/fstab
    has_rc: bool = False  # /etc/rc
    has_rc_local: bool = False  # /etc/rc.local (the first enroot releases' init script)


@dataclass(frozen=True)
class StartRequest:
    """Everything known before the image is looked at: command line, settings, config dir contents."""

    command: tuple[str, ...] = ()
    outer_uid: int = 1000
    outer_gid: int = 1000
    host_environ: Mapping[str, str] = field(default_factory=dict)
    remap_root: bool = False
    writable: bool = False
    userns: bool = True  # False only for real root with ENROOT_ALLOW_SUPERUSER
    unshare_pid: bool = False
    unshare_net: bool = False
    unshare_ipc: bool = False
    unshare_uts: bool = False
    login: bool = True
    init_shell: str = "/bin/sh"
    environ_files: tuple[tuple[str, str], ...] = ()  # (origin, text) in order
    mount_files: tuple[tuple[str, str], ...] = ()
    script_environ: str = ""  # output of the config script's environ()
    script_mounts: str = ""  # output of the config script's mounts()
    env: tuple[envdialect.EnvEntry, ...] = ()  # --env (a start's own variables)
    mounts: tuple[Mount, ...] = ()  # --mount (a start's own mounts), after every other source
    rc_text: str | None = None  # --rc file or the config script's rc() body


@dataclass(frozen=True)
class StartPlan:
    namespaces: int  # CLONE_* flags unshared before the mounts (the pid namespace is separate: it forks)
    uid_map: str  # "inside outside 1"
    gid_map: str
    inner_uid: int
    inner_gid: int
    pid_namespace: bool
    userns: bool
    writable: bool
    early_mounts: tuple[Mount, ...]  # pass -1: before the hooks
    late_mounts: tuple[Mount, ...]  # pass 0 and later, in pass order, after the hooks
    environ: dict[str, str]
    command: tuple[str, ...]
    rc_text: str | None
    use_image_rc: str | None  # "/etc/rc" or "/etc/rc.local" when the image's script is the init script
    login: bool
    init_shell: str


# The system mounts a new PID or network namespace needs in place of the host's (pass -1, after mounts.d).
PID_MOUNTS = ("none /proc none x-create=dir,x-detach,nofail,silent 0 -1\n"
              "proc /proc proc x-create=dir,rw,nosuid,nodev,noexec,private 0 -1\n")
NET_MOUNTS = ("none /sys none x-create=dir,x-detach,nofail,silent 0 -1\n"
              "sysfs /sys sysfs x-create=dir,ro,nosuid,nodev,noexec,private 0 -1\n")


def _fstab_entries(request: StartRequest, image: ImageFacts) -> list[fstab.FstabEntry]:
    env = request.host_environ
    entries = fstab.parse(fstab.substitute(image.fstab, env), "/etc/fstab")
    for origin, text in request.mount_files:
        entries += fstab.parse(fstab.substitute(text, env), origin)
    if request.unshare_pid:
        entries += fstab.parse(PID_MOUNTS, "--pid")
    if request.unshare_net:
        entries += fstab.parse(NET_MOUNTS, "--net")
    entries += fstab.parse(request.script_mounts, "mounts()")
    return entries


def _environment(request: StartRequest, image: ImageFacts) -> dict[str, str]:
    env = request.host_environ
    layers = [envdialect.parse(envdialect.substitute(image.environment, env))]
    layers += [envdialect.parse(envdialect.substitute(text, env)) for _, text in request.environ_files]
    layers.append(envdialect.parse(request.script_environ))
    layers.append(envdialect.with_host_values(request.env, env))
    return envdialect.merge(layers)


def namespace_flags(request: StartRequest) -> int:
    """CLONE_* flags unshared before the mounts (a PID namespace is separate: it needs a fork)."""
    namespaces = CLONE_NEWNS
    if request.userns:
        namespaces |= CLONE_NEWUSER
    for wanted, flag in ((request.unshare_net, CLONE_NEWNET), (request.unshare_ipc, CLONE_NEWIPC),
                         (request.unshare_uts, CLONE_NEWUTS)):
        if wanted:
            namespaces |= flag
    return namespaces


NamespaceStage = tuple[int, str, str]  # (CLONE_* flags, uid_map, gid_map); empty maps: no new user namespace


def namespace_stage(request: StartRequest) -> NamespaceStage:
    """The namespaces to unshare, with the id maps enroot writes: the caller's own ids (`UID UID 1`), or root
    with remap-root (`0 UID 1`). One user namespace for every start, also straight from a squashfs: its
    creator holds every capability in it whatever the map, until it executes the program; the image's
    FUSE server runs as root of a namespace of its own (squashmount.py), so root-owned files become the
    caller's."""
    flags = namespace_flags(request)
    if not request.userns:
        return flags, "", ""
    inner_uid = 0 if request.remap_root else request.outer_uid
    inner_gid = 0 if request.remap_root else request.outer_gid
    return flags, f"{inner_uid} {request.outer_uid} 1", f"{inner_gid} {request.outer_gid} 1"


def build_plan(request: StartRequest, image: ImageFacts) -> StartPlan:
    mounts = [*(mount_from_entry(e) for e in _fstab_entries(request, image)), *request.mounts]
    # A stable sort keeps file order within one pass.
    early = tuple(m for m in mounts if m.passno < 0)
    late = tuple(sorted((m for m in mounts if m.passno >= 0), key=lambda m: m.passno))
    namespaces = namespace_flags(request)
    inner_uid = 0 if request.remap_root else request.outer_uid
    inner_gid = 0 if request.remap_root else request.outer_gid
    use_image_rc = None
    if request.rc_text is None:
        use_image_rc = "/etc/rc" if image.has_rc else "/etc/rc.local" if image.has_rc_local else None
    return StartPlan(
        namespaces=namespaces,
        uid_map=f"{inner_uid} {request.outer_uid} 1",
        gid_map=f"{inner_gid} {request.outer_gid} 1",
        inner_uid=inner_uid if request.userns else request.outer_uid,
        inner_gid=inner_gid if request.userns else request.outer_gid,
        pid_namespace=request.unshare_pid,
        userns=request.userns,
        writable=request.writable,
        early_mounts=early,
        late_mounts=late,
        environ=_environment(request, image),
        command=tuple(request.command),
        rc_text=request.rc_text,
        use_image_rc=use_image_rc,
        login=request.login,
        init_shell=request.init_shell,
    )


MAX_SYMLINKS = 40
ESCAPE = "Invalid cross-device link"  # enroot's words (EXDEV) for a path that leads outside the root


class PathEscapeError(ConfigError):
    """A mount target or in-root source whose `..` or symlinks lead outside the container's root."""

    reference = "path-escape"


def resolve_inside(path: str, readlink: Callable[[str], str | None], *, refuse_escape: bool = False) -> str:
    """Resolve `path` as if the container's root were `/`: symlinks are followed relative to that root, so
    no link or `..` in the image can lead outside. A relative `path` is taken from the root. A `..` above the
    root stays at the root (like the kernel's), or with `refuse_escape` is an error (mounts, like enroot's).
    `readlink(p)` returns the target of the container path `p` if it is a symlink, else None. Components that
    do not exist are kept as named.
    """
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()  # a stack: the next component is at the end
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            elif refuse_escape:
                raise PathEscapeError(f"{path} leads outside the container's root: {ESCAPE}")
            continue
        target = readlink("/" + "/".join([*resolved, part]))
        if target is None:
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise ConfigError(f"too many levels of symbolic links in {path}")
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
    return "/" + "/".join(resolved)


def shell_argv0(shell: str, login: bool) -> str:
    """argv[0] for a shell; a leading '-' makes it a login shell (it reads /etc/profile)."""
    name = shell.rsplit("/", 1)[-1]
    return f"-{name}" if login else name


def exec_argv(plan: StartPlan, shell: str, rc_path: str | None) -> list[str]:
    """The program and arguments the container's process executes (the first item is the path to exec).

    An init script (the --rc file, /etc/rc or, for images of the first releases, /etc/rc.local) runs under
    the init shell with the command as its parameters. Without one, a command runs directly (through the
    shell when it is a single string with spaces), and no command at all gives an interactive shell.
    """
    command = list(plan.command)
    argv0 = shell_argv0(shell, plan.login)
    if rc_path is not None:
        return [shell, argv0, rc_path, *command]
    if not command:
        return [shell, argv0]
    first = command[0]
    if any(c.isspace() for c in first):
        return [shell, argv0, "-c", first, *command[1:]]
    return [first, *command]  # looked up in the container's PATH
