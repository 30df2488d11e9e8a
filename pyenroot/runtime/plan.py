"""A container start as data: namespaces, id maps, ordered mounts, environment and the command (pure).

`initial_plan` turns what the command line, the settings and the configuration dirs say into a `StartPlan`
(namespaces and id maps first), `with_image` adds what the image says (`build_plan` does both);
`launcher.py` carries it out. Nothing here touches the kernel or the file system, so unit tests check plans
directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from pyenroot.errors import ConfigError
from pyenroot.record import factory, record, replace
from pyenroot.runtime import environ as envdialect
from pyenroot.runtime import fstab
from pyenroot.runtime.flags import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    MS_BIND,
    MS_REC,
    MS_REMOUNT,
    MS_SILENT,
)


@record(frozen=True)
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
        if option in fstab.FLAG_OPTIONS:
            on, off = fstab.FLAG_OPTIONS[option]
            flags = (flags | on) & ~off
        elif option in fstab.PROPAGATION_OPTIONS:
            propagation = fstab.PROPAGATION_OPTIONS[option]
        elif key in fstab.CREATE_KEYS:  # the value was checked when the entry was parsed
            create = value
        elif option in fstab.NOOP_OPTIONS:
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


@record(frozen=True)
class ImageFacts:
    """What the plan needs to know about the image (read from its root filesystem by the caller)."""

    environment: str = ""  # /etc/environment
    fstab: str = ""  # /etc/fstab
    has_rc: bool = False  # /etc/rc
    has_rc_local: bool = False  # /etc/rc.local (the first enroot releases' init script)


@record(frozen=True)
class StartRequest:
    """Everything known before the image is looked at: command line, settings, config dir contents."""

    command: tuple[str, ...] = ()
    outer_uid: int = 1000
    outer_gid: int = 1000
    host_environ: Mapping[str, str] = factory(dict)
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


@record(frozen=True)
class StartPlan:
    """What a start does, in the order the launcher does it. The namespace part comes from the request alone
    (`initial_plan`); the mounts, the environment and the init script need the image's root filesystem,
    which exists only inside the namespaces (`with_image` adds them)."""

    namespaces: int  # CLONE_* flags unshared first (the pid namespace is separate: it forks)
    uid_map: str  # "inside outside 1"; "" without a new user namespace
    gid_map: str
    inner_uid: int
    inner_gid: int
    pid_namespace: bool  # unshared with a fork once the root filesystem is mounted (ENROOT_PID is the child's)
    userns: bool  # also: the ownership filter (seccomp) is installed
    writable: bool
    command: tuple[str, ...]
    rc_text: str | None
    login: bool
    init_shell: str
    early_mounts: tuple[Mount, ...] = ()  # pass -1: before the hooks
    late_mounts: tuple[Mount, ...] = ()  # pass 0 and later, in pass order, after the hooks
    environ: dict[str, str] = factory(dict)
    use_image_rc: str | None = None  # "/etc/rc" or "/etc/rc.local" when the image's script is the init script


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
    FUSE server runs as root of a namespace of its own (imagemount.py), so root-owned files become the
    caller's."""
    flags = namespace_flags(request)
    if not request.userns:
        return flags, "", ""
    inner_uid, inner_gid = inner_ids(request)
    return flags, f"{inner_uid} {request.outer_uid} 1", f"{inner_gid} {request.outer_gid} 1"


def inner_ids(request: StartRequest) -> tuple[int, int]:
    """(uid, gid) inside the container: root with remap-root in a user namespace, else the caller's own."""
    if request.remap_root and request.userns:
        return 0, 0
    return request.outer_uid, request.outer_gid


def initial_plan(request: StartRequest) -> StartPlan:
    """The plan before the image is looked at: namespaces, identities, the command."""
    namespaces, uid_map, gid_map = namespace_stage(request)
    inner_uid, inner_gid = inner_ids(request)
    return StartPlan(
        namespaces=namespaces, uid_map=uid_map, gid_map=gid_map, inner_uid=inner_uid, inner_gid=inner_gid,
        pid_namespace=request.unshare_pid, userns=request.userns, writable=request.writable,
        command=tuple(request.command), rc_text=request.rc_text, login=request.login,
        init_shell=request.init_shell,
    )


def with_image(start_plan: StartPlan, request: StartRequest, image: ImageFacts,
               variables: Mapping[str, str] | None = None) -> StartPlan:
    """`start_plan` with the mounts, environment and init script of `request` and `image`. `variables`
    (ENROOT_ROOTFS, ENROOT_PID: as in enroot, the image's fstab and the mounts.d and environ.d files may use
    them) join the host environment that `${...}` and `--env NAME` take values from."""
    if variables:
        request = replace(request, host_environ={**request.host_environ, **variables})
    mounts = [*(mount_from_entry(e) for e in _fstab_entries(request, image)), *request.mounts]
    # A stable sort keeps file order within one pass.
    early = tuple(m for m in mounts if m.passno < 0)
    late = tuple(sorted((m for m in mounts if m.passno >= 0), key=lambda m: m.passno))
    use_image_rc = None
    if request.rc_text is None:
        use_image_rc = "/etc/rc" if image.has_rc else "/etc/rc.local" if image.has_rc_local else None
    return replace(start_plan, early_mounts=early, late_mounts=late, environ=_environment(request, image),
                   use_image_rc=use_image_rc)


def build_plan(request: StartRequest, image: ImageFacts) -> StartPlan:
    return with_image(initial_plan(request), request, image)


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


# Strings, compiled (and cached by re) only where an image has an init script to look at.
_EXEC_ARGUMENTS = r'(?m)^\s*exec "\$@"\s*$'
_CHANGES_LOOKUP = r"PATH|\bset\b|\bshift\b|\balias\b|\bhash\b"


def rc_runs_arguments(rc_text: str, rc_local_text: str = "") -> bool:
    """Whether an init script runs its arguments as a program looked up in PATH: it has the line `exec "$@"`
    (enroot's and our /etc/rc for an image without an Entrypoint) and neither it nor the /etc/rc.local it
    sources could change PATH or the arguments first. Then a missing command can be named before the shell
    reports it with the script's line number."""
    code = "\n".join(line for line in f"{rc_text}\n{rc_local_text}".splitlines()
                     if not line.lstrip().startswith("#"))
    return bool(re.search(_EXEC_ARGUMENTS, code)) and not re.search(_CHANGES_LOOKUP, code)


# Runs the init script after a check of the command it will `exec`, looked up as the shell itself would (after a
# login shell's profile): a missing one is named, with a shell's exit code, rather than reported by the shell
# in terms of the script's lines ("/etc/rc: exec: line 11: nosuchcmd: not found"). `.` keeps $0 (the script)
# and the arguments. A relative path is left alone: the script runs it from the image's working directory.
CHECKED_RC = (
    'case $1 in '
    '/*) [ -f "$1" ] && [ -x "$1" ] || { printf \'pyenroot: error: command not found in the container: %s '
    '(no such executable file) (command-not-found)\\n\' "$1" >&2; exit 127; } ;; '
    '*/*) ;; '
    '*) command -v "$1" > /dev/null 2>&1 || { printf \'pyenroot: error: command not found in the container: %s '
    '(not in the container\\047s PATH: %s) (command-not-found)\\n\' "$1" "$PATH" >&2; exit 127; } ;; '
    'esac; . "$0"'
)


def programs_to_read_ahead(command: Sequence[str], init_shell: str, search_path: str) -> list[tuple[str, ...]]:
    """The programs a start may execute first, in order, each as the container paths to try (the first that is
    a file is the one): the init shell (it runs an image's init script, a command line with spaces, or no
    command at all), then the command's program as `search_path` finds it. A guess made before the image's
    files are read: reading a program that does not run costs only the reading."""
    programs = [(init_shell,)]
    first = command[0] if command else ""
    if not first or any(c.isspace() for c in first) or first == init_shell:
        return programs
    if first.startswith("/"):
        programs.append((first,))
    elif "/" not in first:  # (a relative path runs from the working directory: not guessed)
        programs.append(tuple(f"{d.rstrip('/')}/{first}" for d in search_path.split(":") if d.startswith("/")))
    return programs


def exec_argv(plan: StartPlan, shell: str, rc_path: str | None, check_command: bool = False) -> list[str]:
    """The program and arguments the container's process executes (the first item is the path to exec).

    An init script (the --rc file, /etc/rc or, for images of the first releases, /etc/rc.local) runs under
    the init shell with the command as its parameters. Without one, a command runs directly (through the
    shell when it is a single string with spaces), and no command at all gives an interactive shell.
    """
    command = list(plan.command)
    argv0 = shell_argv0(shell, plan.login)
    if rc_path is not None:
        if check_command and command:  # the script runs its arguments (rc_runs_arguments)
            return [shell, argv0, "-c", CHECKED_RC, rc_path, *command]
        return [shell, argv0, rc_path, *command]
    if not command:
        return [shell, argv0]
    first = command[0]
    if any(c.isspace() for c in first):
        return [shell, argv0, "-c", first, *command[1:]]
    return [first, *command]  # looked up in the container's PATH
