"""`pyenroot remove [-f] NAME...`."""

import sys


def add_arguments(parser) -> None:
    parser.add_argument("-f", "--force", action="store_true",
                        help="do not ask; stop running containers (SIGTERM, SIGKILL after 5 s) and remove them")
    parser.add_argument("names", nargs="+", metavar="NAME", help="container names")


def _confirm(path) -> bool:
    """Ask on the terminal, as enroot does; anything but y/Y keeps the container."""
    sys.stderr.write(f"Do you really want to delete {path}? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip()
    return answer in ("y", "Y")


def run(args, settings) -> int:
    from pyenroot.containers.discovery import running_containers, stop_container
    from pyenroot.containers.names import existing_container
    from pyenroot.containers.remove import remove_container
    from pyenroot.errors import StorageError

    force = args.force or settings.flag("ENROOT_FORCE_OVERRIDE")
    names = list(dict.fromkeys(args.names))
    # Check every name before deleting anything, so that a typo in the list removes nothing.
    paths = [existing_container(settings, name) for name in names]
    if not force:
        running = {p.name: p.pid for p in running_containers(settings)}
        for name in names:
            if name in running:
                raise StorageError(f"container {name} is running (PID {running[name]})",
                                   hint="stop it first, or use -f to remove it anyway")
    interactive = not force and sys.stdin.isatty()
    for name, path in zip(names, paths, strict=True):
        if interactive and not _confirm(path):
            continue
        stopped = stop_container(settings, name)
        if stopped:
            print(f"pyenroot: stopped {stopped} process{'es' if stopped > 1 else ''} of container {name}",
                  file=sys.stderr)
        remove_container(settings, name)
    return 0
