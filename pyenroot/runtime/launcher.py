"""Carries a start out: namespaces, root filesystem, mounts, hooks, pivot_root and the exec of the command.

The whole start is one process that ends by executing the container's program (same PID as `pyenroot
start`), so exit codes, signals, stdin and the TTY are the program's own. Only with a new PID namespace does
a parent stay behind (it forwards signals and exits with 128+N when the child dies of signal N).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyenroot.errors import PyenrootError, RuntimeStartError
from pyenroot.runtime import environ as envdialect
from pyenroot.runtime import fstab, plan, syscalls
from pyenroot.runtime.flags import (
    CLONE_NEWCGROUP,
    CLONE_NEWNET,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    MNT_DETACH,
    MS_BIND,
    MS_MOVE,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    MS_SLAVE,
)
from pyenroot.runtime.plan import ImageFacts, Mount, StartPlan, StartRequest

LOCK_WAIT_S = 30.0
_ST_TO_MS = ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
             (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
             (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))


class CommandNotFound(RuntimeStartError):
    exit_code = 127
    reference = "command-not-found"


class CommandNotExecutable(RuntimeStartError):
    exit_code = 126
    reference = "command-not-executable"


@dataclass
class Target:
    kind: str  # "dir" (a created container) or "squashfs" (an image started directly)
    path: Path


@dataclass
class Launch:
    """What the launcher needs besides the request: where things are and what runs as hooks."""

    target: Target
    request: StartRequest
    runtime_path: Path
    host_environ: dict[str, str]  # process environment + ENROOT_* settings, for hooks
    hook_steps: list = field(default_factory=list)  # hooks.HookStep
    script_hooks: tuple[list[str], dict[str, str]] | None = None  # the config script's hooks()
    native_overlay: bool = True
    writable_sqsh: str = "unpack"  # PYENROOT_SQSH_WRITABLE (squashmount.WRITABLE_METHODS)
    processors: int = 1
    warn: Callable[[str], None] = lambda message: None
    trace: Callable[[str], None] = lambda step: None  # called after each step (`start -v` prints timings)


# ------------------------------------------------------------------------------------ helpers


def _readlink_in(root: str) -> Callable[[str], str | None]:
    def readlink(path: str) -> str | None:
        try:
            return os.readlink(root + path)
        except OSError:
            return None
    return readlink


def host_path(root: Path, path: str, *, refuse_escape: bool = False) -> Path:
    """The host path of container path `path`, resolved so that it cannot leave `root` (with `refuse_escape`,
    a `..` above the root is an error instead of staying at the root)."""
    return Path(str(root) + plan.resolve_inside(path, _readlink_in(str(root)), refuse_escape=refuse_escape))


def _read_inside(root: Path, path: str) -> str:
    try:
        with open(host_path(root, path), errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def read_image_facts(root: Path) -> ImageFacts:
    return ImageFacts(
        environment=_read_inside(root, "/etc/environment"),
        fstab=_read_inside(root, "/etc/fstab"),
        has_rc=host_path(root, "/etc/rc").is_file(),
        has_rc_local=host_path(root, "/etc/rc.local").is_file(),
    )


def _locked_flags(path: Path) -> int:
    """Flags the kernel locks on a mount made in a less privileged namespace: a remount must keep them."""
    try:
        found = os.statvfs(path).f_flag
    except OSError:
        return 0
    return sum(ms for st, ms in _ST_TO_MS if found & st)


def _reason(exc: OSError) -> str:
    """The plain reason of a system call error (syscalls.py puts the call into its message too)."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _loopback_up() -> None:
    """Bring `lo` up in a new network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, 0x8913, request)[:18])[1]
        fcntl.ioctl(sock, 0x8914, struct.pack("16sh", b"lo", flags | 0x1))


def _enter_user_namespace(flags: int, uid_map: str, gid_map: str) -> None:
    syscalls.unshare(flags)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", uid_map)
    _write("/proc/self/gid_map", gid_map)


# ------------------------------------------------------------------------------------ mounts


class Mounter:
    """Performs `Mount`s with targets inside `root`, never outside it."""

    def __init__(self, root: Path, warn: Callable[[str], None]):
        self.root = root
        self.warn = warn

    def source(self, mount: Mount) -> str:
        """The source to mount: one declared inside the root filesystem (`${ENROOT_ROOTFS}/...`, as the image
        binds its Volumes) is resolved within the root like a target, so that the image's symlinks and `..`
        cannot turn it into a host path; any other source is a host path, as in enroot."""
        root = str(self.root)
        if mount.source != root and not mount.source.startswith(root + "/"):
            return mount.source
        return str(host_path(self.root, mount.source[len(root):] or "/", refuse_escape=True))

    def _create(self, mount: Mount, source: str, target: Path) -> None:
        if os.path.lexists(target):
            return
        kind = mount.create
        if kind == "auto":
            kind = "file" if mount.is_bind and not os.path.isdir(source) else "dir"
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if kind == "dir":
            target.mkdir(mode=0)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0))

    def _mount(self, mount: Mount, target: Path) -> None:
        if mount.detach:
            syscalls.umount2(target, MNT_DETACH)
            return
        source = self.source(mount)
        if mount.create:
            self._create(mount, source, target)
        if mount.move:
            syscalls.mount(source, target, None, MS_MOVE)
            return
        syscalls.mount(source, target, mount.fstype, mount.flags, mount.data)
        if mount.remount_flags:
            # Keep what the kernel locked (or the remount fails with EPERM) and add what was asked for.
            flags = MS_REMOUNT | MS_BIND | mount.remount_flags | _locked_flags(target)
            syscalls.mount(None, target, None, flags)
        if mount.propagation:
            syscalls.mount(None, target, None, mount.propagation)

    def perform(self, mount: Mount) -> None:
        target = None
        try:
            target = host_path(self.root, mount.target, refuse_escape=True)
            self._mount(mount, target)
        except OSError as exc:
            message = f"mount {mount.source} on {mount.target} ({mount.origin}): {_reason(exc)}"
            if not mount.nofail:
                missing = exc.errno == errno.ENOENT and target is not None and not os.path.lexists(target)
                hint = f"{mount.target} does not exist in the container: add the option x-create=dir (or file)"
                raise RuntimeStartError(message, hint=hint if missing else None) from None
            if not mount.silent:
                self.warn(message)
        except PyenrootError as error:  # the target or source leads out of the root
            raise error.with_context(f"mount {mount.source} on {mount.target} ({mount.origin})") from None

    def perform_line(self, line: str) -> None:
        entry = fstab.parse_line(line, "hook")
        if entry is not None:
            self.perform(plan.mount_from_entry(entry))


# ------------------------------------------------------------------------------------ stages


def _lock_rootfs(root: Path) -> int | None:
    """Serialise the configuration of one root filesystem (like enroot's /.lock); None if it is read-only."""
    try:
        fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeStartError(f"could not acquire the lock of {root} within {LOCK_WAIT_S:.0f} s") from None
            time.sleep(0.05)


def _runtime_tmpfs(path: Path) -> Path:
    """A private tmpfs over ENROOT_RUNTIME_PATH, seen only by this mount namespace."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    syscalls.mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=700")
    return path


def _run_hooks(launch: Launch, start_plan: StartPlan, root: Path, pid: int, mounter: Mounter,
               workdir: Callable[[], Path]) -> tuple[dict[str, str], list[str]]:
    from pyenroot.runtime import hooks

    ctx = hooks.HookContext(
        rootfs=root, environ=dict(start_plan.environ), host_environ=launch.host_environ,
        outer_uid=launch.request.outer_uid, outer_gid=launch.request.outer_gid,
        remap_root=launch.request.remap_root, pid=pid, mount_now=mounter.perform_line,
    )
    external = [s for s in launch.hook_steps if s.path is not None]
    work = workdir() if external or launch.script_hooks else None
    for step in launch.hook_steps:
        hooks.run_hooks([step], ctx, work or Path("/nonexistent"))
    if launch.script_hooks and work is not None:
        argv, extra = launch.script_hooks
        hooks.run_external(argv, "hooks()", ctx, work, extra)
    return ctx.environ, list(ctx.mounts)


def _switch_root(root: Path) -> None:
    os.chdir(root)
    syscalls.pivot_root(".", ".")
    # The old root now sits on top of the new one: cut it loose without letting the unmount propagate.
    syscalls.mount(None, ".", None, MS_SLAVE | MS_REC)
    syscalls.umount2(".", MNT_DETACH)
    os.chroot(".")
    os.chdir("/")


def _passwd_entry(uid: int) -> tuple[str, str, str] | None:
    try:
        with open("/etc/passwd", errors="replace") as handle:
            for line in handle:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 7 and fields[2] == str(uid):
                    return fields[0], fields[5] or "/", fields[6] or "/bin/sh"
    except OSError:
        pass
    return None


def _final_environment(start_plan: StartPlan, environ: dict[str, str], logname: str) -> dict[str, str]:
    if not start_plan.login:
        return environ
    entry = _passwd_entry(start_plan.inner_uid)
    user, home, shell = entry or (logname if start_plan.inner_uid else "root", "/", "/bin/sh")
    return envdialect.login_defaults(environ, user=user, home=home, shell=shell, logname=logname,
                                     is_root=start_plan.inner_uid == 0)


def _rc_fd(text: str) -> int:
    fd = os.memfd_create("rc", 0)  # inheritable: the shell reads it as /proc/self/fd/N
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _close_inherited_fds(keep: int) -> None:
    """Close every descriptor above stderr but `keep`: the container must not inherit the caller's files."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _default_signals() -> None:
    """Give the program a clean signal state: Python ignores SIGPIPE and SIGXFSZ (ignored signals stay ignored
    across exec), and a caller such as slurmstepd may have left signals blocked."""
    for number in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _exec(start_plan: StartPlan, environ: dict[str, str]) -> None:
    keep = -1
    rc_path = start_plan.use_image_rc
    if start_plan.rc_text is not None:
        keep = _rc_fd(start_plan.rc_text)
        rc_path = f"/proc/self/fd/{keep}"
    shell = start_plan.init_shell
    argv = plan.exec_argv(start_plan, shell, rc_path)
    if argv[0] == shell and not os.access(shell, os.X_OK):
        raise RuntimeStartError(f"the init shell {shell} does not exist in the container",
                                hint="set ENROOT_INIT_SHELL to a shell the image has")
    if start_plan.login:
        try:
            os.chdir(environ.get("HOME") or "/")
        except OSError:
            os.chdir("/")
    _close_inherited_fds(keep)
    _default_signals()
    try:
        if argv[0] == shell:
            os.execve(shell, argv[1:], environ)
        os.execvpe(argv[0], argv[1:], environ)
    except FileNotFoundError:
        raise CommandNotFound(f"command not found in the container: {argv[0]}") from None
    except PermissionError:
        raise CommandNotExecutable(f"permission denied: {argv[0]}") from None
    except OSError as exc:
        raise RuntimeStartError(f"cannot execute {argv[0]}: {exc.strerror}") from None


# ------------------------------------------------------------------------------------ pid namespace


def supervise(child: int) -> int:
    """Stay as the parent of `child` (PID 1 of a new namespace, a bundle's container): forward signals, mirror
    stops, return its status."""
    def forward(number: int, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, number)

    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, forward)
    while True:
        _, status = os.waitpid(child, os.WUNTRACED)
        if os.WIFSTOPPED(status):
            os.kill(os.getpid(), signal.SIGSTOP)  # resumes here on SIGCONT
            os.kill(child, signal.SIGCONT)
            continue
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)


INIT_PROCESS_NAME = "pyenroot-init"


def _become_init() -> None:
    """As PID 1 of the new namespace, fork the command and stay its init: the kernel drops signals to PID 1 that
    it has no handler for, so SIGTERM would not stop a command that ran as PID 1; init also reaps orphans.
    Returns in the child only."""
    child = os.fork()
    if child == 0:
        return
    with contextlib.suppress(OSError):
        syscalls.set_process_name(INIT_PROCESS_NAME)  # list --fancy shows the command, not this init
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, lambda number, _frame: _signal_quietly(child, number))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        if pid == child:
            os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))


def _signal_quietly(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)


def _fork_into_pid_namespace() -> tuple[int | None, int]:
    """(None, host pid of the child) in the child; (child, child) in the parent."""
    syscalls.unshare(CLONE_NEWPID)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(read_end)
        os.write(write_end, str(child).encode())
        os.close(write_end)
        return child, child
    os.close(write_end)
    syscalls.set_parent_death_signal(signal.SIGKILL)
    data = os.read(read_end, 32)
    os.close(read_end)
    if not data:  # the parent died before the death signal was armed
        os._exit(1)
    return None, int(data)


# ------------------------------------------------------------------------------------ the start


def _unshare(stage: plan.NamespaceStage) -> None:
    flags, uid_map, gid_map = stage
    if not flags:
        return
    if uid_map:
        _enter_user_namespace(flags, uid_map, gid_map)
    else:
        syscalls.unshare(flags)
    if flags & CLONE_NEWNET:
        _loopback_up()


def launch(spec: Launch) -> int:
    """Start the container. Returns only in the parent of a new PID namespace (its exit status);
    otherwise this process becomes the container's program."""
    try:
        return _launch(spec)
    except OSError as exc:  # anything the steps above did not put into words already
        raise RuntimeStartError(f"cannot start the container: {exc.strerror or exc}"
                                + (f" ({exc.filename})" if exc.filename else "")) from None


THREAD_EXIT_LIMIT_S = 30.0


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _wait_single_threaded() -> None:
    """unshare(CLONE_NEWUSER) fails with EINVAL while the process has a second thread: join the helpers an
    import in this process left (their work is done: download pool, read-ahead), and wait until the kernel
    has let them go too (a joined thread is still counted for a moment)."""
    import threading

    deadline = time.monotonic() + THREAD_EXIT_LIMIT_S
    for thread in threading.enumerate():
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    while _thread_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    if _thread_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.current_thread())
        raise RuntimeStartError("cannot create the container's namespaces: this process still runs "
                                f"{_thread_count() - 1} other thread(s) ({names or 'not started by Python'})")


def _unshare_hint(flags: int, error: int) -> str | None:
    """What to change when a new user namespace is refused, for the errors that mean the system forbids it."""
    if not flags & CLONE_NEWUSER:
        return None
    if error == errno.ENOSPC:
        return "user namespaces must be enabled: sysctl user.max_user_namespaces (0 or all in use)"
    if error == errno.EPERM:
        return ("unprivileged user namespaces must be allowed: sysctl kernel.unprivileged_userns_clone=1, "
                "kernel.apparmor_restrict_unprivileged_userns=0")
    return None


def _launch(spec: Launch) -> int:
    request, target = spec.request, spec.target
    stage = plan.namespace_stage(request)
    _wait_single_threaded()
    try:
        _unshare(stage)
    except OSError as exc:
        raise RuntimeStartError(f"cannot create the container's namespaces: {exc.strerror}",
                                hint=_unshare_hint(stage[0], exc.errno or 0)) from None
    syscalls.mount(None, "/", None, MS_REC | MS_SLAVE)
    runtime: list[Path] = []

    def workdir() -> Path:
        if not runtime:
            runtime.append(_runtime_tmpfs(spec.runtime_path))
        return runtime[0]

    if target.kind == "squashfs":
        from pyenroot.runtime import squashmount

        sub = workdir() / "image"
        sub.mkdir(mode=0o755)
        mounted = squashmount.mount_image(target.path, sub, writable=request.writable,
                                          writable_method=spec.writable_sqsh, native_overlay=spec.native_overlay,
                                          processors=spec.processors)
        for note in mounted.notes:
            spec.warn(note)
        root = mounted.rootfs
    else:
        root = target.path
    spec.trace("namespaces and root filesystem")
    enroot_pid = os.getpid()
    if request.unshare_pid:
        parent_child, enroot_pid = _fork_into_pid_namespace()
        if parent_child is not None:
            return supervise(parent_child)
    _configure_and_exec(spec, root, enroot_pid, workdir)
    raise AssertionError("unreachable")  # _configure_and_exec executes the program or raises


def _configure_and_exec(spec: Launch, root: Path, enroot_pid: int, workdir: Callable[[], Path]) -> None:
    request = spec.request
    try:
        syscalls.mount(str(root), root, None, MS_BIND | MS_REC)
    except OSError as exc:
        raise RuntimeStartError(f"cannot bind the root filesystem {root}: {_reason(exc)}") from None
    # As in enroot, ${ENROOT_ROOTFS} and ${ENROOT_PID} may be used in the image's fstab and in mounts.d files
    # (the image format binds Volumes with ${ENROOT_ROOTFS}/PATH).
    substitutions = {**request.host_environ, "ENROOT_ROOTFS": str(root), "ENROOT_PID": str(enroot_pid)}
    start_plan = plan.build_plan(dataclasses.replace(request, host_environ=substitutions), read_image_facts(root))
    mounter = Mounter(root, spec.warn)
    lock = _lock_rootfs(root)
    for mount in start_plan.early_mounts:
        mounter.perform(mount)
    spec.trace("system mounts (pass -1)")
    environ, hook_mounts = _run_hooks(spec, start_plan, root, enroot_pid, mounter, workdir)
    spec.trace(f"hooks ({len(spec.hook_steps)} steps)")
    for line in hook_mounts:
        mounter.perform_line(line)
    for mount in start_plan.late_mounts:
        mounter.perform(mount)
    if lock is not None:
        os.close(lock)  # a file open for writing would make the read-only remount fail (EBUSY)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | _locked_flags(root)
    if start_plan.writable:
        flags &= ~MS_RDONLY
    else:
        flags |= MS_RDONLY
    try:
        syscalls.mount(None, root, None, flags)
    except OSError as exc:
        if start_plan.writable and exc.errno in (errno.EPERM, errno.EACCES):
            raise RuntimeStartError(f"cannot make {root} writable: it is read-only on the host") from None
        raise RuntimeStartError(f"cannot remount the root filesystem: {exc.strerror}") from None
    if request.userns:
        from pyenroot.runtime import seccomp  # import before the host's files disappear
    try:
        spec.trace("mounts and read-only remount")
        _switch_root(root)
    except OSError as exc:
        raise RuntimeStartError(f"cannot switch to the container's root: {exc.strerror}") from None
    with contextlib.suppress(OSError):  # without cgroup namespaces the container sees the host's cgroup paths
        syscalls.unshare(CLONE_NEWCGROUP)
    syscalls.set_no_new_privs()
    if request.userns:
        try:
            seccomp.install()
        except (OSError, ValueError) as exc:
            spec.warn(f"seccomp filter not installed: {exc}")
    logname = spec.host_environ.get("LOGNAME") or spec.host_environ.get("USER") or str(request.outer_uid)
    spec.trace("pivot_root and seccomp; executing the command")
    if request.unshare_pid:
        _become_init()
    _exec(start_plan, _final_environment(start_plan, environ, logname))
