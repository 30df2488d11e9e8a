"""Carries a start out: namespaces, root filesystem, mounts, hooks, pivot_root and the exec of the command.
The last stage of a start: `assemble.start` builds the `Launch` (what to start: a `Target`) that `launch` runs.

The whole start is one process that ends by executing the container's program (same PID as `pyenroot
start`), so exit codes, signals, stdin and the TTY are the program's own. Only with a new PID namespace does
a parent stay behind (it forwards signals and exits with 128+N when the child dies of signal N). Every kernel
call goes through a `syscalls.Syscalls`, so that tests can check the order of the steps with a fake.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from pyenroot.errors import RuntimeStartError
from pyenroot.record import factory, record
from pyenroot.runtime import environ as envdialect
from pyenroot.runtime import plan
from pyenroot.runtime.flags import (
    CLONE_NEWCGROUP,
    CLONE_NEWNET,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SLAVE,
)
from pyenroot.runtime.mounter import Mounter, locked_flags, read_image_facts, reason
from pyenroot.runtime.plan import StartPlan, StartRequest
from pyenroot.runtime.syscalls import LinuxSyscalls, Syscalls

LOCK_WAIT_S = 30.0


class CommandNotFound(RuntimeStartError):
    exit_code = 127
    reference = "command-not-found"


class CommandNotExecutable(RuntimeStartError):
    exit_code = 126
    reference = "command-not-executable"


@record
class Target:
    """The container a start runs: a created container's directory or a squashfs image (assemble.resolve_target)."""

    kind: str  # "dir" (a created container) or "squashfs" (an image started directly)
    path: Path


@record
class Launch:
    """What the launcher needs besides the request: where things are and what runs as hooks. Built by
    `assemble.start` from the options and settings; `launch(spec)` carries it out."""

    target: Target
    request: StartRequest
    runtime_path: Path
    host_environ: dict[str, str]  # process environment + ENROOT_* settings, for hooks
    logname: str = ""  # the container's LOGNAME unless a source sets it (assemble.host_login_name)
    hook_steps: list = factory(list)  # hooks.HookStep
    script_hooks: tuple[list[str], dict[str, str]] | None = None  # the config script's hooks()
    native_overlay: bool = True
    writable_sqsh: str = "unpack"  # PYENROOT_SQSH_WRITABLE (options.WRITABLE_METHODS)
    processors: int = 1
    warn: Callable[[str], None] = lambda message: None
    trace: Callable[[str], None] = lambda step: None  # called after each step (`start -v` prints timings)


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


def _runtime_tmpfs(kernel: Syscalls, path: Path) -> Path:
    """A private tmpfs over ENROOT_RUNTIME_PATH, seen only by this mount namespace."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    kernel.mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=700")
    return path


def _run_hooks(launch: Launch, start_plan: StartPlan, root: Path, pid: int, mounter: Mounter,
               workdir: Callable[[], Path]) -> tuple[dict[str, str], list[str]]:
    from pyenroot.runtime import hooks

    ctx = hooks.HookContext(
        rootfs=root, environ=dict(start_plan.environ), host_environ=launch.host_environ,
        outer_uid=launch.request.outer_uid, outer_gid=launch.request.outer_gid,
        remap_root=launch.request.remap_root, pid=pid, mount_now=mounter.perform_line,
    )
    # Hooks run with every capability of the user namespace (executables keep them across exec), before
    # the read-only remount and pivot_root.
    keep = mounter.kernel.keep_capabilities_across_exec
    external = [s for s in launch.hook_steps if s.path is not None]
    work = workdir() if external or launch.script_hooks else None
    for step in launch.hook_steps:
        hooks.run_hooks([step], ctx, work or Path("/nonexistent"), keep_capabilities=keep)
    if launch.script_hooks and work is not None:
        argv, extra = launch.script_hooks
        hooks.run_external(argv, "hooks()", ctx, work, extra, keep_capabilities=keep)
    return ctx.environ, list(ctx.mounts)


def _remount_root(kernel: Syscalls, start_plan: StartPlan, root: Path) -> None:
    """Read-only unless writable, always nosuid and nodev, keeping what the kernel locked."""
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | locked_flags(kernel, root)
    if start_plan.writable:
        flags &= ~MS_RDONLY
    else:
        flags |= MS_RDONLY
    try:
        kernel.mount(None, root, None, flags)
    except OSError as exc:
        if start_plan.writable and exc.errno in (errno.EPERM, errno.EACCES):
            raise RuntimeStartError(f"cannot make {root} writable: it is read-only on the host") from None
        raise RuntimeStartError(f"cannot remount the root filesystem: {exc.strerror}") from None


def _switch_root(kernel: Syscalls, root: Path) -> None:
    kernel.chdir(root)
    kernel.pivot_root(".", ".")
    # The old root now sits on top of the new one: cut it loose without letting the unmount propagate.
    kernel.mount(None, ".", None, MS_SLAVE | MS_REC)
    kernel.umount2(".", MNT_DETACH)
    kernel.chroot(".")
    kernel.chdir("/")


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


def _read_quietly(path: str) -> str | None:
    try:
        with open(path, errors="replace") as handle:
            return handle.read(1 << 20)
    except OSError:
        return None


def _rc_runs_arguments(start_plan: StartPlan, rc_path: str) -> bool:
    """plan.rc_runs_arguments for the init script of this start, read in the container's root."""
    rc_text = start_plan.rc_text if start_plan.rc_text is not None else _read_quietly(rc_path)
    if rc_text is None:
        return False
    rc_local = (_read_quietly("/etc/rc.local") or "") if "rc.local" in rc_text else ""
    return plan.rc_runs_arguments(rc_text, rc_local)


def _exec(kernel: Syscalls, start_plan: StartPlan, environ: dict[str, str]) -> None:
    keep = -1
    rc_path = start_plan.use_image_rc
    if start_plan.rc_text is not None:
        keep = _rc_fd(start_plan.rc_text)
        rc_path = f"/proc/self/fd/{keep}"
    shell = start_plan.init_shell
    check = rc_path is not None and bool(start_plan.command) and _rc_runs_arguments(start_plan, rc_path)
    argv = plan.exec_argv(start_plan, shell, rc_path, check_command=check)
    if argv[0] == shell and not os.access(shell, os.X_OK):
        raise RuntimeStartError(f"the init shell {shell} does not exist in the container",
                                hint="set ENROOT_INIT_SHELL to a shell the image has")
    if start_plan.login:
        try:
            kernel.chdir(environ.get("HOME") or "/")
        except OSError:
            kernel.chdir("/")
    kernel.close_fds_except(keep)  # the container must not inherit the caller's files
    kernel.reset_signals()
    try:
        if argv[0] == shell:
            kernel.execve(shell, argv[1:], environ)
        kernel.execvpe(argv[0], argv[1:], environ)
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

    for number in _FORWARDED:
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
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _become_init(kernel: Syscalls) -> None:
    """As PID 1 of the new namespace, fork the command and stay its init: the kernel drops signals to PID 1 that
    it has no handler for, so SIGTERM would not stop a command that ran as PID 1; init also reaps orphans.
    Returns in the child only."""
    child = os.fork()
    if child == 0:
        return
    with contextlib.suppress(OSError):
        kernel.set_process_name(INIT_PROCESS_NAME)  # list --fancy shows the command, not this init
    for number in _FORWARDED:
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


def _fork_into_pid_namespace(kernel: Syscalls) -> tuple[int | None, int]:
    """(None, host pid of the child) in the child; (child, child) in the parent."""
    kernel.unshare(CLONE_NEWPID)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(read_end)
        os.write(write_end, str(child).encode())
        os.close(write_end)
        return child, child
    os.close(write_end)
    kernel.set_parent_death_signal(signal.SIGKILL)
    data = os.read(read_end, 32)
    os.close(read_end)
    if not data:  # the parent died before the death signal was armed
        os._exit(1)
    return None, int(data)


# ------------------------------------------------------------------------------------ the start


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
    if _thread_count() == 1:
        return  # the common case, without importing threading
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


def _enter_namespaces(kernel: Syscalls, start_plan: StartPlan) -> None:
    """One user namespace for every start (also straight from a squashfs), with enroot's id maps: its
    creator holds every capability in it whatever the map, until it executes the program."""
    flags = start_plan.namespaces
    try:
        if start_plan.uid_map:
            kernel.enter_user_namespace(flags, start_plan.uid_map, start_plan.gid_map)
        elif flags:
            kernel.unshare(flags)
        if flags & CLONE_NEWNET:
            kernel.bring_loopback_up()
    except OSError as exc:
        raise RuntimeStartError(f"cannot create the container's namespaces: {exc.strerror}",
                                hint=_unshare_hint(flags, exc.errno or 0)) from None


def launch(spec: Launch, kernel: Syscalls | None = None) -> int:
    """Start the container. Returns only in the parent of a new PID namespace (its exit status);
    otherwise this process becomes the container's program. `kernel`: the syscalls seam (a test's fake)."""
    try:
        return _launch(spec, kernel or LinuxSyscalls())
    except OSError as exc:  # anything the steps above did not put into words already
        raise RuntimeStartError(f"cannot start the container: {exc.strerror or exc}"
                                + (f" ({exc.filename})" if exc.filename else "")) from None


def _launch(spec: Launch, kernel: Syscalls) -> int:
    target = spec.target
    start_plan = plan.initial_plan(spec.request)
    _wait_single_threaded()
    _enter_namespaces(kernel, start_plan)
    kernel.mount(None, "/", None, MS_REC | MS_SLAVE)
    runtime: list[Path] = []

    def workdir() -> Path:
        if not runtime:
            runtime.append(_runtime_tmpfs(kernel, spec.runtime_path))
        return runtime[0]

    if target.kind == "squashfs":
        from pyenroot.runtime import imagemount

        sub = workdir() / "image"
        sub.mkdir(mode=0o755)
        mounted = imagemount.mount_image(target.path, sub, writable=start_plan.writable,
                                          writable_method=spec.writable_sqsh, native_overlay=spec.native_overlay,
                                          processors=spec.processors,
                                          meanwhile=lambda: _prepare_later_stages(spec, start_plan))
        for note in mounted.notes:
            spec.warn(note)
        root = mounted.rootfs
        if mounted.method != "unpacked":  # (an unpacked image's files are in memory already)
            from pyenroot.runtime.readahead import read_ahead

            search = envdialect.default_path(start_plan.inner_uid == 0)  # the image's own is not read yet
            read_ahead(root, plan.programs_to_read_ahead(start_plan.command, start_plan.init_shell, search))
    else:
        root = target.path
    spec.trace("namespaces and root filesystem")
    enroot_pid = os.getpid()
    if start_plan.pid_namespace:
        parent_child, enroot_pid = _fork_into_pid_namespace(kernel)
        if parent_child is not None:
            return supervise(parent_child)
    _configure_and_exec(spec, kernel, start_plan, root, enroot_pid, workdir)
    raise AssertionError("unreachable")  # _configure_and_exec executes the program or raises


def _prepare_later_stages(spec: Launch, start_plan: StartPlan) -> None:
    """What the stages after the root filesystem need that does not depend on it, done while squashfuse mounts
    an image (which leaves this process idle for a few milliseconds): the hooks' modules and host lookups."""
    from pyenroot.runtime import hooks

    hooks.prepare(spec.hook_steps, spec.request.outer_uid, spec.request.outer_gid)
    if start_plan.userns:
        from pyenroot.runtime import seccomp  # noqa: F401 (imported for _configure_and_exec)


def _configure_and_exec(spec: Launch, kernel: Syscalls, start_plan: StartPlan, root: Path, enroot_pid: int,
                        workdir: Callable[[], Path]) -> None:
    try:
        kernel.mount(str(root), root, None, MS_BIND | MS_REC)
    except OSError as exc:
        raise RuntimeStartError(f"cannot bind the root filesystem {root}: {reason(exc)}") from None
    start_plan = plan.with_image(start_plan, spec.request, read_image_facts(root),
                                 {"ENROOT_ROOTFS": str(root), "ENROOT_PID": str(enroot_pid)})
    mounter = Mounter(root, kernel, spec.warn)
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
    _remount_root(kernel, start_plan, root)
    if start_plan.userns:
        from pyenroot.runtime import seccomp  # import before the host's files disappear
    try:
        spec.trace("mounts and read-only remount")
        _switch_root(kernel, root)
    except OSError as exc:
        raise RuntimeStartError(f"cannot switch to the container's root: {exc.strerror}") from None
    with contextlib.suppress(OSError):  # without cgroup namespaces the container sees the host's cgroup paths
        kernel.unshare(CLONE_NEWCGROUP)
    kernel.set_no_new_privs()
    if start_plan.userns:
        try:
            seccomp.install(kernel)
        except (OSError, ValueError) as exc:
            spec.warn(f"seccomp filter not installed: {exc}")
    spec.trace("pivot_root and seccomp; executing the command")
    if start_plan.pid_namespace:
        _become_init(kernel)
    _exec(kernel, start_plan, _final_environment(start_plan, environ, spec.logname))
