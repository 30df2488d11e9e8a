"""`exec`: run a command inside a running container, joining the namespaces, root and cwd of one of its PIDs.

The pure part decides which namespaces to join and which environment the command gets; `attach` does the
system calls. Joining a PID namespace only affects children, so the command always runs in a forked child
while the parent waits, forwards signals and returns the child's exit code.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterable, Mapping

from pyenroot.errors import RuntimeStartError, UsageError
from pyenroot.record import record

# Imported here, not lazily: after entering the container the package is no longer reachable.
from pyenroot.runtime import flags, seccomp, syscalls

# setns order: the user namespace first (it grants the capabilities the other joins need), then pid (takes
# effect for children only), then the rest.
NAMESPACE_ORDER: tuple[tuple[str, int], ...] = (
    ("user", flags.CLONE_NEWUSER),
    ("pid", flags.CLONE_NEWPID),
    ("mnt", flags.CLONE_NEWNS),
    ("net", flags.CLONE_NEWNET),
    ("ipc", flags.CLONE_NEWIPC),
    ("uts", flags.CLONE_NEWUTS),
    ("cgroup", flags.CLONE_NEWCGROUP),
)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_ENV_ARG = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(=|\Z)")


@record(frozen=True)
class Target:
    """What `exec` found out about the process it joins."""

    pid: int
    environ: dict[str, str]
    join: tuple[str, ...]  # namespace kinds that differ from ours, in NAMESPACE_ORDER


def parse_pid(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise UsageError(f"invalid PID: {text!r}", hint="give the PID of a process in the container (pyenroot list -f)")
    return int(text)


def parse_environ(data: bytes) -> dict[str, str]:
    """The NUL-separated KEY=VALUE list of /proc/PID/environ; entries without '=' are dropped."""
    result: dict[str, str] = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            result[os.fsdecode(key)] = os.fsdecode(value)
    return result


def environment(base: Mapping[str, str], env_args: Iterable[str], host: Mapping[str, str]) -> dict[str, str]:
    """The command's environment: the target's, then each -e KEY=VAL, or -e KEY taking the host's value."""
    result = dict(base)
    for arg in env_args:
        if not _ENV_ARG.match(arg):
            raise UsageError(f"invalid environment variable: {arg!r}", hint="use KEY=VALUE or KEY")
        key, sep, value = arg.partition("=")
        result[key] = value if sep else host.get(key, "")
    return result


def namespaces_to_join(theirs: Mapping[str, tuple[int, int]], ours: Mapping[str, tuple[int, int]]) -> tuple[str, ...]:
    """Kinds (in join order) whose namespace identity (device, inode) differs from ours; missing kinds are skipped."""
    return tuple(kind for kind, _ in NAMESPACE_ORDER if kind in theirs and theirs[kind] != ours.get(kind))


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for a signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


# ------------------------------------------------------------------------------------------- effects


def _ns_identities(pid: int | str) -> dict[str, tuple[int, int]]:
    found = {}
    for kind, _ in NAMESPACE_ORDER:
        try:
            st = os.stat(f"/proc/{pid}/ns/{kind}")
        except FileNotFoundError:
            continue  # kernel without this namespace type
        found[kind] = (st.st_dev, st.st_ino)
    return found


def inspect(pid: int) -> Target:
    """Read the target's environment and namespaces (needs the same rights as ptrace)."""
    if not os.path.exists(f"/proc/{pid}"):
        raise RuntimeStartError(f"no such process: {pid}")
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = parse_environ(handle.read())
        theirs = _ns_identities(pid)
    except PermissionError:
        raise RuntimeStartError(f"cannot join process {pid}: permission denied",
                                hint="you can only join containers that you started") from None
    except FileNotFoundError:
        raise RuntimeStartError(f"no such process: {pid}") from None
    join = namespaces_to_join(theirs, _ns_identities("self"))
    if "mnt" not in join:  # every container has its own mount namespace; sharing ours means it is not in one
        raise RuntimeStartError(f"process {pid} is not in a container",
                                hint="give the PID of a process in the container (pyenroot list -f)")
    return Target(pid, environ, join)


def _open_path(path: str, what: str, pid: int, flags: int = os.O_PATH) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeStartError(f"cannot open the {what} of process {pid}: {exc.strerror}") from None


def _enter(target: Target) -> None:
    """Join the target's namespaces, then its root and working directory (opened before anything moves)."""
    fds: dict[str, int] = {}
    root_fd = _open_path(f"/proc/{target.pid}/root", "root directory", target.pid)
    cwd_fd = _open_path(f"/proc/{target.pid}/cwd", "working directory", target.pid)
    try:
        for kind in target.join:
            fds[kind] = _open_path(f"/proc/{target.pid}/ns/{kind}", f"{kind} namespace", target.pid, os.O_RDONLY)
        for kind, flag in NAMESPACE_ORDER:
            if kind in fds:
                try:
                    syscalls.setns(fds[kind], flag)
                except OSError as exc:
                    raise RuntimeStartError(f"cannot join the {kind} namespace of process {target.pid}: "
                                            f"{os.strerror(exc.errno or 0)}") from None
        try:
            os.fchdir(root_fd)
            os.chroot(".")
            os.fchdir(cwd_fd)
        except OSError as exc:
            raise RuntimeStartError(f"cannot enter the root of process {target.pid}: {exc.strerror}") from None
    finally:
        for fd in [root_fd, cwd_fd, *fds.values()]:
            os.close(fd)


def _restrict(unprivileged: bool) -> None:
    """What the container's own processes have: no new privileges, and the ownership filter when unprivileged."""
    syscalls.set_no_new_privs()
    if unprivileged:
        seccomp.install()


def _child(command: list[str], env: dict[str, str], unprivileged: bool, report_fd: int,
           mask: Iterable[int]) -> None:
    """In the forked child: never returns. Failures before exec are written to `report_fd` for the parent."""
    try:
        syscalls.set_parent_death_signal(signal.SIGKILL)
        _restrict(unprivileged)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # the command starts with the caller's signal mask
        os.execvpe(command[0], command, env)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        message = f"cannot run {command[0]}: {reason}"
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        with contextlib.suppress(OSError):
            os.write(report_fd, f"{code}:{message}".encode())
        os._exit(code)
    except BaseException as exc:  # never fall back into the caller's stack in a forked child
        with contextlib.suppress(OSError):
            os.write(report_fd, f"1:{exc}".encode())
        os._exit(1)


def _read_report(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _forward_signals() -> list[int]:
    """Forward signals to the child once its PID is appended to the returned list. Installed before the fork
    so that no signal kills the parent in between; the child drops the handlers when it executes."""
    child: list[int] = []

    def forward(signum: int, _frame) -> None:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child[0], signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    return child


def attach(pid: int, command: list[str], env_args: Iterable[str], host_env: Mapping[str, str],
           *, unprivileged: bool) -> int:
    """Run `command` in the container of `pid`; returns its exit code (128+N if killed by signal N)."""
    if not command:
        raise UsageError("missing command", hint="usage: pyenroot exec [-e KEY[=VAL]] PID COMMAND [ARG...]")
    target = inspect(pid)
    env = environment(target.environ, env_args, host_env)
    _enter(target)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    forward_to = _forward_signals()
    # Held back until the parent knows the child's PID, so that no early signal is lost.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    child = os.fork()
    if child == 0:
        os.close(read_fd)
        _child(command, env, unprivileged, write_fd, mask)
    forward_to.append(child)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(write_fd)
    report = _read_report(read_fd)
    os.close(read_fd)
    _, status = os.waitpid(child, 0)
    if report:
        code, _, message = report.decode(errors="replace").partition(":")
        error = RuntimeStartError(message)
        error.exit_code = int(code) if code.isdigit() else 1
        raise error
    return exit_code(status)
