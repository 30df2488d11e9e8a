"""`pyenroot doctor [--gpu]`: what this machine supports for unprivileged containers, and its GPUs.

Every check is real (a user namespace is created, an overlay is mounted in it) but happens in a short-lived
child process, so nothing on the host changes. Exit status 1 when containers cannot start at all (no user
namespaces); with --gpu, 1 when no NVIDIA driver is found.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pyenroot.runtime.flags import CLONE_NEWNS, CLONE_NEWUSER, MNT_DETACH
from pyenroot.runtime.syscalls import LinuxSyscalls, Syscalls

Row = tuple[str, str, str]  # item, state (ok / missing / no / ...), detail
TOOLS = ("squashfuse", "squashfuse_ll", "fuse-overlayfs", "tar2sqfs", "mksquashfs", "unsquashfs")


def add_arguments(parser) -> None:
    parser.add_argument("--gpu", action="store_true", help="only the GPU section")


def _in_child(action: Callable[[], None]) -> tuple[bool, str]:
    """Run `action` in a forked child; (True, '') if it returned, else (False, why)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(read_end)
        code = 0
        try:
            action()
        except BaseException as exc:  # the child reports every failure through the pipe and exits
            os.write(write_end, str(exc).encode(errors="replace")[:500])
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0, message


def _enter_user_namespace(kernel: Syscalls) -> None:
    uid, gid = os.geteuid(), os.getegid()
    kernel.enter_user_namespace(CLONE_NEWUSER | CLONE_NEWNS, f"{uid} {uid} 1", f"{gid} {gid} 1")


def _overlay_in_user_namespace(kernel: Syscalls) -> None:
    _enter_user_namespace(kernel)
    scratch = tempfile.mkdtemp(prefix="pyenroot-doctor-")
    try:
        kernel.mount("tmpfs", scratch, "tmpfs", 0, "mode=700")
        for sub in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(scratch, sub))
        options = f"lowerdir={scratch}/lower,upperdir={scratch}/upper,workdir={scratch}/work"
        kernel.mount("overlay", f"{scratch}/merged", "overlay", 0, options)
    finally:
        # The directory lives on the host's /tmp: unmount our tmpfs (private to this child) and remove it.
        if os.path.ismount(scratch):
            kernel.umount2(scratch, MNT_DETACH)
        os.rmdir(scratch)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def user_namespace_rows(kernel: Syscalls | None = None) -> tuple[list[Row], bool]:
    """Whether this user may create a user namespace (through `kernel`, the Linux calls unless given)."""
    kernel = kernel or LinuxSyscalls()
    rows: list[Row] = []
    limit = _read("/proc/sys/user/max_user_namespaces")
    notes = [f"max_user_namespaces={limit}" if limit is not None else "max_user_namespaces unknown"]
    for knob, bad in (("/proc/sys/kernel/unprivileged_userns_clone", "0"),
                      ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1")):
        value = _read(knob)
        if value is not None:
            notes.append(f"{Path(knob).name}={value}" + (" (blocks users)" if value == bad else ""))
    works, why = _in_child(lambda: _enter_user_namespace(kernel))
    detail = ", ".join(notes) + ("; unshare(CLONE_NEWUSER) works" if works else f"; unshare failed: {why}")
    rows.append(("user namespaces", "ok" if works else "no", detail))
    return rows, works


def fuse_rows() -> list[Row]:
    fuse = Path("/dev/fuse")
    if not fuse.exists():
        rows = [("/dev/fuse", "missing", "squashfs images cannot be mounted; use `create` and start by name")]
    elif os.access(fuse, os.R_OK | os.W_OK):
        rows = [("/dev/fuse", "ok", "readable and writable")]
    else:
        rows = [("/dev/fuse", "no", "not accessible to this user (mode 0666 expected)")]
    for tool in TOOLS:
        path = shutil.which(tool)
        rows.append((tool, "ok" if path else "missing", path or "not on PATH"))
    return rows


def overlay_row(userns_works: bool, kernel: Syscalls) -> Row:
    if not userns_works:
        return ("overlay in userns", "no", "needs user namespaces")
    works, why = _in_child(lambda: _overlay_in_user_namespace(kernel))
    if works:
        return ("overlay in userns", "ok", "kernel overlayfs can be mounted unprivileged")
    return ("overlay in userns", "no", f"{why}; fuse-overlayfs is used instead")


def gpu_rows(settings) -> tuple[list[Row], bool]:
    from pyenroot.gpu import driver, report

    found = driver.discover(settings.get("PYENROOT_NVIDIA_ROOT") or "/", want_cuda=True, want_migs=True)
    return report.gpu_lines(found), found.present


def render(sections: list[tuple[str, list[Row]]]) -> str:
    width = max((len(item) for _, rows in sections for item, _, _ in rows), default=10) + 2
    lines = []
    for title, rows in sections:
        lines.append(title)
        lines.extend(f"  {item:<{width}}{state:<9}{detail}".rstrip() for item, state, detail in rows)
    return "\n".join(lines)


def run(args, settings) -> int:
    sections: list[tuple[str, list[Row]]] = []
    status = 0
    if not args.gpu:
        kernel = LinuxSyscalls()
        userns, works = user_namespace_rows(kernel)
        sections.append(("Containers", userns + fuse_rows() + [overlay_row(works, kernel)]))
        status = 0 if works else 1
    rows, has_driver = gpu_rows(settings)
    sections.append(("GPU", rows))
    if args.gpu and not has_driver:
        status = 1
    print(render(sections))
    return status
