"""The one process runner: every external tool the product starts (squashfs tools, decompressors, tar, engines'
`save`, hooks, bash for config scripts, nvidia-smi, a Slurm importer) is started here, dying with pyenroot.

Development tools (`pyenroot/devtools/`, `slurm/devcluster.py`, the demos) keep plain subprocess calls: they
are not the product. Cheap to import: subprocess, ctypes and shutil are loaded only when a tool is started.

Death signal without `preexec_fn` under threads: a forked child of a process with other threads may find a lock
(the allocator's, the import lock) held forever, so Python code must not run between fork and exec there. When
this process has one thread, the child sets PR_SET_PDEATHSIG itself (ctypes' prctl, bound before the fork: the
child imports nothing). Otherwise the tool is started through a tiny exec wrapper, a fresh `python3 -I -S` that
sets the signal and execs the tool (a few milliseconds: only the threaded import pays it). The signal follows
the thread that started the child, so tools are started from the thread that waits for them.
"""

from __future__ import annotations

import errno
import os

PIPE, DEVNULL, INHERIT = -1, -3, None  # subprocess.PIPE and subprocess.DEVNULL; INHERIT: the caller's own
_SIGKILL = 9
_PR_SET_PDEATHSIG = 1
# unsquashfs needs one descriptor per open file while writing; enroot caps the request at 2^26.
_NOFILE_WANTED = 1 << 26
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device", as the tools report it
NO_SUCH_FILE = os.strerror(errno.ENOENT)

# The exec wrapper: argv = -c PARENT_PID NOFILE PATH ARGV0 ARGS...; exits 137 (as if killed) when the parent is
# already gone (a parent outside the child's PID namespace reads as 0); NOFILE 0 leaves the limit of open files alone.
_WRAPPER = (
    "import ctypes,os,resource,sys\n"
    f"ctypes.CDLL(None).prctl({_PR_SET_PDEATHSIG},{_SIGKILL},0,0,0)\n"
    "if os.getppid() not in (int(sys.argv[1]),0):os._exit(137)\n"
    "s,h=resource.getrlimit(resource.RLIMIT_NOFILE)\n"
    "w=int(sys.argv[2]) if h==resource.RLIM_INFINITY else min(h,int(sys.argv[2]))\n"
    "if s!=resource.RLIM_INFINITY and s<w:\n"
    " try:resource.setrlimit(resource.RLIMIT_NOFILE,(w,h))\n"
    " except (ValueError,OSError):pass\n"
    "os.execv(sys.argv[3],sys.argv[4:])\n"
)


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        import threading

        return threading.active_count() == 1


def _in_child(parent: int, prctl, nofile: int, child_setup):
    """What the child of a one-thread process runs before exec: no imports, no new objects to speak of."""
    import contextlib  # loaded here, in the parent: the function below only uses them
    import resource

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        if os.getppid() not in (parent, 0):  # 0: the parent is outside our PID namespace
            os._exit(137)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = nofile if hard == resource.RLIM_INFINITY else min(hard, nofile)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        if child_setup is not None:
            child_setup()
    return setup


def not_installed(tool: str, hint: str | None):
    from pyenroot.errors import ImageError

    return ImageError(f"{tool} is not installed", hint=hint)


def spawn(argv: list[str], *, stdin=DEVNULL, stdout=DEVNULL, stderr=PIPE, keep_fds: tuple[int, ...] = (),
          env: dict[str, str] | None = None, cwd: str | None = None, bufsize: int = -1, child_setup=None,
          hint: str | None = None, many_files: bool = False):
    """Start a tool that dies with us (a `subprocess.Popen`). With `hint`, a missing tool becomes the one-line
    "X is not installed" ImageError; without, FileNotFoundError is the caller's. `child_setup` (a start's
    capability call) runs in the child before exec and needs a one-thread process. `many_files`: the image
    tools' raised limit of open files (not for hooks and scripts: some programs close every descriptor up
    to that limit)."""
    nofile = _NOFILE_WANTED if many_files else 0
    import ctypes
    import subprocess

    try:
        if _single_threaded():
            setup = _in_child(os.getpid(), ctypes.CDLL(None).prctl, nofile, child_setup)
            return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=keep_fds, env=env,
                                    cwd=cwd, bufsize=bufsize, preexec_fn=setup)
        if child_setup is not None:
            raise RuntimeError(f"{argv[0]}: child_setup needs a process with one thread")
        import shutil
        import sys

        path = shutil.which(argv[0], path=(env if env is not None else os.environ).get("PATH"))
        if path is None:
            raise FileNotFoundError(errno.ENOENT, NO_SUCH_FILE, argv[0])
        return subprocess.Popen([sys.executable, "-I", "-S", "-c", _WRAPPER, str(os.getpid()), str(nofile), path,
                                 *argv],
                                stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=keep_fds, env=env, cwd=cwd,
                                bufsize=bufsize)
    except FileNotFoundError:
        if hint is None:
            raise
        raise not_installed(argv[0], hint) from None


# Pipes between the image tools: 1 MiB (the unprivileged maximum by default) instead of 64 KiB, so that a
# reader wakes per megabyte, not per 64 KiB, and a producer keeps working while the consumer is busy.
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, Linux


def widen_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Make the pipe at `fd` hold `size` bytes where the system allows (best effort: a smaller limit stays)."""
    import contextlib
    import fcntl

    with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size, or not a pipe
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", _F_SETPIPE_SZ), size)


def start_server(argv: list[str], *, stderr: int, child_setup=None) -> int:
    """Start a program that serves while we run (a direct start's FUSE servers) and return its pid, for the
    caller to wait on. It dies with us, runs in a session of its own with no signal blocked, reads /dev/null
    and writes its messages (and a failure before exec) to the descriptor `stderr`; `child_setup` (entering a
    user namespace of its own, keeping capabilities) runs in the child before exec.

    Forked here, not through subprocess: `start IMAGE.sqsh` imports nothing of subprocess otherwise, and its
    import (threading, selectors, locale: about 4 ms) would cost every such start more than the mount itself.
    Python runs between fork and exec, so the process must have one thread (a start has: it unshared a user
    namespace, which needs that too)."""
    if not _single_threaded():
        raise RuntimeError(f"{argv[0]}: start_server needs a process with one thread")
    import ctypes  # loaded already on a start's path (runtime/syscalls.py)
    import signal

    setup = _in_child(os.getpid(), ctypes.CDLL(None).prctl, 0, child_setup)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, [])  # a caller (slurmstepd) may hand down blocked signals
            os.setsid()
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(stderr, 2)
            setup()
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"{argv[0]}: {exc.strerror or exc}\n".encode())
        finally:
            os._exit(127)
    return pid


def run(argv: list[str], *, stdin=DEVNULL, stdout=PIPE, stderr=PIPE, env: dict[str, str] | None = None,
        cwd: str | None = None, keep_fds: tuple[int, ...] = (), timeout: float | None = None, text: bool = True,
        child_setup=None, hint: str | None = None, many_files: bool = False):
    """Run a tool to its end (a `subprocess.CompletedProcess`, text by default). A timeout kills it and raises
    TimeoutError (an OSError)."""
    import subprocess

    process = spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd, keep_fds=keep_fds,
                    child_setup=child_setup, hint=hint, many_files=many_files)
    with process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise TimeoutError(f"{argv[0]} did not finish in {timeout} s") from None
        except BaseException:
            process.kill()
            raise
    if text:
        out = out.decode(errors="replace") if out is not None else None
        err = err.decode(errors="replace") if err is not None else None
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def message_lines(text: str | None) -> list[str]:
    """A tool's non-empty output lines, stripped."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def out_of_space(text: str | None) -> bool:
    """Whether a tool's messages say ENOSPC (often not on the last line, which only says that a write failed)."""
    return "No space left" in (text or "")


def check(argv: list[str], what: str, *, hint: str = "install squashfs-tools", keep_fds: tuple[int, ...] = (),
          env: dict[str, str] | None = None, on_output=None, accept=None) -> None:
    """Run a tool; its failure becomes one error line (`what`: what we were doing, the tool named), ENOSPC a
    StorageError with a hint. `accept(returncode, lines)` may call a failure harmless. With `on_output`, the
    tool's stdout (a squashfs tool's own progress bar) is passed to it as it comes, in chunks of bytes: what
    the output means is the caller's (image/progress.py reads the bar's counts)."""
    from pyenroot.errors import ImageError, StorageError

    if on_output is None:
        result = run(argv, keep_fds=keep_fds, env=env, hint=hint, many_files=True)
        returncode, output = result.returncode, result.stderr or result.stdout
    else:
        returncode, output = _run_streaming(argv, on_output, keep_fds=keep_fds, env=env, hint=hint)
    if returncode == 0:
        return
    lines = message_lines(output)
    if accept is not None and accept(returncode, lines):
        return
    if out_of_space(output):
        raise StorageError(f"{what}: {argv[0]} failed: {NO_SPACE.lower()}",
                           hint="free some space there, or choose another location")
    detail = lines[-1] if lines else f"exit code {returncode}"
    raise ImageError(f"{what}: {argv[0]} failed: {detail}")


def _run_streaming(argv: list[str], on_output, *, keep_fds: tuple[int, ...], env: dict[str, str] | None,
                   hint: str) -> tuple[int, str]:
    """check's run for a tool whose stdout is read as it comes (stderr, the tool's messages, goes to a file
    meanwhile, so that neither pipe can fill up)."""
    import tempfile

    with tempfile.TemporaryFile() as errors:
        process = spawn(argv, stdout=PIPE, stderr=errors, keep_fds=keep_fds, env=env, hint=hint, many_files=True)
        try:
            while chunk := os.read(process.stdout.fileno(), 1 << 16):
                on_output(chunk)
            process.stdout.close()
            returncode = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        errors.seek(0)
        return returncode, errors.read().decode(errors="replace")
