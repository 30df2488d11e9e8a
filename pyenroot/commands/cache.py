"""`pyenroot cache list [--json]`, `pyenroot cache prune [--max-size SIZE] [--older-than AGE] [--dry-run]`."""

from __future__ import annotations

import json
import time


def add_arguments(parser) -> None:
    from pyenroot.cliparser import Parser

    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser, required=True)
    listing = actions.add_parser("list", help="blobs and built squashfs images: size, last use, images using them")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    pruning = actions.add_parser("prune", help="remove the least recently used entries (never one in use)")
    pruning.add_argument("--max-size", metavar="SIZE", help="shrink the cache to SIZE (e.g. 20G)")
    pruning.add_argument("--older-than", metavar="AGE", help="remove entries unused for AGE (e.g. 30d, 12h)")
    pruning.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{int(seconds // length)}{unit} ago"
    return "just now"


def _listing(entries, as_json: bool) -> None:
    from pyenroot.image.progress import human_size

    if as_json:
        print(json.dumps([{"kind": e.kind, "name": e.name, "size": e.size, "last_use": e.last_use,
                           "images": list(e.images)} for e in entries], indent=1))
        return
    now = time.time()
    for e in sorted(entries, key=lambda e: -e.last_use):
        name = e.name if e.kind == "blob" else f"{e.name[:16]}.sqsh"
        print(f"{e.kind:8} {name:71} {human_size(e.size):>9} {_age(now - e.last_use):>9}  {' '.join(e.images)}")
    print(f"total {human_size(sum(e.size for e in entries))} in {len(entries)} entries")


def run(args, settings) -> int:
    from pyenroot.errors import UsageError
    from pyenroot.image import prune
    from pyenroot.image.progress import human_size

    if args.action == "list":
        _listing(prune.list_entries(settings), args.json)
        return 0
    if args.max_size is None and args.older_than is None:
        raise UsageError("cache prune: say what to remove with --max-size or --older-than")
    limits = prune.Limits(max_size=None if args.max_size is None else prune.parse_size(args.max_size),
                          older_than=None if args.older_than is None else prune.parse_age(args.older_than))
    result = prune.prune(settings, limits, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for entry in result.removed:
        print(f"{verb} {entry.kind} {entry.name} ({human_size(entry.size)})")
    for entry in result.in_use:
        print(f"in use, kept {entry.kind} {entry.name} ({human_size(entry.size)})")
    print(f"{verb} {len(result.removed)} entries, {human_size(sum(e.size for e in result.removed))}; "
          f"{human_size(result.remaining)} left")
    return 0
