"""`pyenroot doctor [--gpu] [--json]`: what this machine supports for unprivileged containers, and its GPUs.

Every check is real (a user namespace is created, an overlay is mounted in it) but happens in a short-lived
child process, so nothing on the host changes. Exit status 1 when containers cannot start at all (no user
namespaces); with --gpu, 1 when no NVIDIA driver is found. `--json` prints the same report as one line of
JSON (schema in docs/admin.md); `--summary` reads such lines from many nodes and prints who lacks what.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pyenroot import __version__
from pyenroot.errors import PyenrootError
from pyenroot.runtime.flags import CLONE_NEWNS, CLONE_NEWUSER, MNT_DETACH
from pyenroot.runtime.syscalls import LinuxSyscalls, Syscalls

Row = tuple[str, str, str]  # item, state (ok / missing / no / none), detail
TOOLS = ("squashfuse", "squashfuse_ll", "fuse-overlayfs", "tar2sqfs", "mksquashfs", "unsquashfs")
# The --json report's layout; a change that removes or renames a field raises it (docs/admin.md).
SCHEMA_VERSION = 1
STATES = ("ok", "missing", "no", "none")
CONTAINERS, GPU = "Containers", "GPU"
# `srun -l` puts "TASK: " before each line of output (padded when there are ten tasks or more).
_TASK_LABEL = re.compile(r"^\s*(\d+): ?")


def add_arguments(parser) -> None:
    parser.add_argument("--gpu", action="store_true", help="only the GPU section")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help=f"print the report as one line of JSON (schema_version {SCHEMA_VERSION})")
    output.add_argument("--summary", nargs="*", metavar="FILE",
                        help="summarise --json reports of many nodes (from FILEs or standard input): "
                             "one line per node with what it lacks")


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


def as_json(sections: list[tuple[str, list[Row]]], host: str, kernel: str) -> dict:
    """The --json report (pure): every row as a check, and one verdict per section."""
    checks = [{"section": title.lower(), "name": item.strip(), "state": state, "detail": detail}
              for title, rows in sections for item, state, detail in rows]
    by_title = dict(sections)
    containers = None
    if CONTAINERS in by_title:
        userns = [state for item, state, _ in by_title[CONTAINERS] if item == "user namespaces"]
        containers = "ok" if userns == ["ok"] else "no"
    gpu_driver = [state for item, state, _ in by_title.get(GPU, []) if item == "driver"]
    return {
        "schema_version": SCHEMA_VERSION,
        "pyenroot_version": __version__,
        "host": host,
        "kernel": kernel,
        "containers": containers,
        "gpu": "ok" if gpu_driver == ["ok"] else "none",
        "checks": checks,
    }


@dataclass(frozen=True)
class NodeSummary:
    host: str
    containers: str
    gpu: str
    not_ok: tuple[str, ...]  # names of the container checks that are not ok, with their state


def parse_reports(lines: Iterable[str], source: str) -> list[dict]:
    """Reports from --json output as srun prints it, labelled (`srun -l`) or not.

    srun forwards a task's output in pieces of about 1 KiB and, with -l, starts each piece on a new labelled
    line; a report (which has no newline of its own) is whole again once its task's pieces are joined.
    """
    streams: dict[str, list[str]] = {}
    for line in lines:
        label = _TASK_LABEL.match(line)
        task = label.group(1) if label else ""
        streams.setdefault(task, []).append((line[label.end():] if label else line).rstrip("\r\n"))
    reports = []
    for task, pieces in streams.items():
        reports.extend(_decode_reports("".join(pieces), f"{source}, task {task}" if task else source))
    return reports


def _decode_reports(text: str, where: str) -> list[dict]:
    decoder = json.JSONDecoder()
    reports = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return reports
        try:
            report, position = decoder.raw_decode(text, position)
        except ValueError as exc:
            raise PyenrootError(f"{where}: not doctor --json output: {exc}", reference="doctor-report",
                                hint="feed it the output of `srun -l ... pyenroot doctor --json`") from None
        version = report.get("schema_version") if isinstance(report, dict) else None
        if version != SCHEMA_VERSION:
            raise PyenrootError(f"{where}: doctor report schema_version {version!r}, this pyenroot reads "
                                f"{SCHEMA_VERSION}", reference="doctor-report",
                                hint="run the same pyenroot version on the nodes and here")
        reports.append(report)


def summarize(reports: list[dict]) -> list[NodeSummary]:
    """One summary per host (the first report of a host that sent several), sorted by host name."""
    seen: dict[str, NodeSummary] = {}
    for report in reports:
        host = str(report.get("host", "?"))
        if host in seen:
            continue
        not_ok = tuple(f"{check['name']} ({check['state']})" for check in report.get("checks", [])
                       if check.get("section") == CONTAINERS.lower() and check.get("state") != "ok")
        seen[host] = NodeSummary(host, str(report.get("containers") or "-"), str(report.get("gpu", "-")), not_ok)
    return [seen[host] for host in sorted(seen)]


def render_summary(nodes: list[NodeSummary]) -> str:
    header = ("HOST", "CONTAINERS", "GPU", "NOT OK")
    rows = [header, *((n.host, n.containers, n.gpu, ", ".join(n.not_ok) or "-") for n in nodes)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
             for row in rows]
    ready = sum(1 for n in nodes if n.containers == "ok")
    lines.append(f"{len(nodes)} node(s): {ready} can start containers, {len(nodes) - ready} cannot")
    return "\n".join(lines)


def _read_summary_input(files: list[str]) -> list[dict]:
    if not files:
        return parse_reports(sys.stdin, "<stdin>")
    reports = []
    for name in files:
        try:
            text = Path(name).read_text()
        except OSError as exc:
            raise PyenrootError(f"cannot read {name}: {exc.strerror}", reference="doctor-report") from None
        reports.extend(parse_reports(text.splitlines(), name))
    return reports


def run(args, settings) -> int:
    if args.summary is not None:
        print(render_summary(summarize(_read_summary_input(args.summary))))
        return 0
    sections: list[tuple[str, list[Row]]] = []
    status = 0
    if not args.gpu:
        kernel = LinuxSyscalls()
        userns, works = user_namespace_rows(kernel)
        sections.append((CONTAINERS, userns + fuse_rows() + [overlay_row(works, kernel)]))
        status = 0 if works else 1
    rows, has_driver = gpu_rows(settings)
    sections.append((GPU, rows))
    if args.gpu and not has_driver:
        status = 1
    if args.json:
        uname = os.uname()
        # Under srun, Slurm's name for the node (what sinfo and scontrol show) rather than its host name.
        host = os.environ.get("SLURMD_NODENAME") or uname.nodename
        # One write of one line: srun's output of many nodes keeps each report on its own line.
        sys.stdout.write(json.dumps(as_json(sections, host, uname.release)) + "\n")
        sys.stdout.flush()
    else:
        print(render(sections))
    return status
