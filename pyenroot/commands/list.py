"""`pyenroot list [-f|--fancy] [--no-trunc] [--json]`."""

from __future__ import annotations

import json
import time

COLUMNS = ("NAME", "PID", "STATE", "STARTED", "TIME", "MNTNS", "USERNS", "COMMAND")
# On a terminal, --fancy's NAME column is at most this wide: a name made from a digest (84 characters) would push
# every other column off the screen. Longer names lose their middle, keeping the start and the distinct end.
NAME_WIDTH = 40
ELLIPSIS = "..."


def add_arguments(parser) -> None:
    parser.add_argument("-f", "--fancy", action="store_true", help="show running processes and their state")
    parser.add_argument("--no-trunc", action="store_true",
                        help=f"with -f on a terminal, show names longer than {NAME_WIDTH} characters in full "
                             "(output to a pipe or file always has them in full)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def format_elapsed(seconds: float) -> str:
    """Like ps's etime: [[DD-]HH:]MM:SS."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{minutes:02d}:{secs:02d}"
    if hours or days:
        text = f"{hours:02d}:{text}"
    if days:
        text = f"{days}-{text}"
    return text


def format_started(started: float, now: float) -> str:
    """Like ps's stime: HH:MM today, else the month and day."""
    local, today = time.localtime(started), time.localtime(now)
    if local[:3] == today[:3]:
        return time.strftime("%H:%M", local)
    return time.strftime("%b%d", local)


def rows(names: list[str], processes: list, now: float) -> list[tuple[str, ...]]:
    """One row per running instance, and one (name only) per container that is not running."""
    result: list[tuple[str, ...]] = []
    by_name: dict[str, list] = {}
    for process in processes:
        by_name.setdefault(process.name, []).append(process)
    for name in [*names, *sorted(n for n in by_name if n not in names)]:
        running = by_name.get(name, [])
        if not running:
            result.append((name, "", "", "", "", "", "", ""))
        for p in running:
            result.append((name, str(p.pid), p.state, format_started(p.started, now),
                           format_elapsed(now - p.started), str(p.mntns), str(p.userns), p.command))
    return result


def elide(name: str, width: int) -> str:
    """`name` in at most `width` characters: its middle replaced by `...` when it is longer."""
    if len(name) <= width:
        return name
    keep = width - len(ELLIPSIS)
    head = keep // 2
    return name[:head] + ELLIPSIS + name[len(name) - (keep - head):]


def table(lines: list[tuple[str, ...]], name_width: int | None = None) -> str:
    """Columns padded to their widest cell; the last column is not padded. With `name_width`, longer names
    are elided to it."""
    if name_width is not None:
        lines = [(elide(line[0], name_width), *line[1:]) for line in lines]
    all_lines = [COLUMNS, *lines]
    widths = [max(len(line[i]) for line in all_lines) for i in range(len(COLUMNS) - 1)]
    out = []
    for line in all_lines:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(line[:-1])]
        out.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(out)


def as_json(names: list[str], processes: list, data: str) -> list[dict]:
    entries = []
    known = set(names)
    for name in [*names, *sorted({p.name for p in processes} - known)]:
        running = [p for p in processes if p.name == name]
        entries.append({
            "name": name if name in known else None,
            "path": f"{data}/{name}" if name in known else None,
            "processes": [{"pid": p.pid, "state": p.state, "started": p.started, "mntns": p.mntns,
                           "userns": p.userns, "command": p.command} for p in running],
        })
    return entries


def run(args, settings) -> int:
    from pyenroot.containers.discovery import running_containers
    from pyenroot.containers.names import container_names, data_path

    names = container_names(settings)
    if not args.fancy and not args.json:
        for name in names:
            print(name)
        return 0
    processes = running_containers(settings)
    if args.json:
        data = str(data_path(settings, create=False))
        print(json.dumps(as_json(names, processes, data), indent=2))
    else:
        import sys

        name_width = None if args.no_trunc or not sys.stdout.isatty() else NAME_WIDTH
        print(table(rows(names, processes, time.time()), name_width))
    return 0
