"""`pyenroot start [options] NAME|IMAGE [COMMAND [ARG...]]`: the command line, turned into a typed
`runtime.options.StartOptions` for `runtime.assemble.start` (which builds the `Launch` that `runtime.launcher`
carries out)."""

# The options of a start: (short, long, attribute) of the flags and of the options that take a value. argparse
# declares them in add_container_options; quick_arguments reads their plain forms from this table (a unit test
# checks that the two agree).
FLAGS = (("-r", "--root", "root"), ("-w", "--rw", "rw"), (None, "--pid", "pid"), (None, "--net", "net"),
         (None, "--ipc", "ipc"), (None, "--uts", "uts"))
VALUES = (("-c", "--conf", "conf"), ("-e", "--env", "env"), (None, "--rc", "rc"), ("-m", "--mount", "mount"))
REPEATABLE = frozenset({"env", "mount"})


def add_arguments(parser) -> None:
    add_container_options(parser)
    parser.add_argument("target", metavar="NAME|IMAGE", help="container name or squashfs image")
    add_command_argument(parser)


def add_container_options(parser) -> None:
    """The options of a start (also those of a bundle's runtime)."""
    parser.add_argument("-c", "--conf", metavar="CONFIG", help="configuration script")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VAL]",
                        help="environment variable to set in the container (repeatable)")
    parser.add_argument("--rc", metavar="SCRIPT", help="init script to run instead of the image's /etc/rc")
    parser.add_argument("-r", "--root", action="store_true", help="map the caller to root in the container")
    parser.add_argument("-w", "--rw", action="store_true", help="make the root filesystem writable")
    parser.add_argument("-m", "--mount", action="append", default=[], metavar="FSTAB",
                        help="mount, fstab fields separated by ':' (repeatable)")
    parser.add_argument("--pid", action="store_true", help="new PID namespace")
    parser.add_argument("--net", action="store_true", help="new network namespace")
    parser.add_argument("--ipc", action="store_true", help="new IPC namespace")
    parser.add_argument("--uts", action="store_true", help="new UTS namespace")


def add_command_argument(parser) -> None:
    import argparse

    command = parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]",
                                  help="command to run (default: the image's entrypoint, or a shell)")
    command.required = False  # it may be empty; argparse lists every positional as required when one is missing


def quick_arguments(words: list[str]):
    """The arguments of `start` (the words after it) as argparse would give them, without importing argparse,
    for the plain forms: `-e VALUE`, `--env VALUE`, `--env=VALUE`, single flags, `-v`, then NAME|IMAGE and the
    command. None for anything else (--help, `--`, clustered or abbreviated options, a value that looks like
    an option, a mistake): the full parser then reads them and says what is wrong."""
    from types import SimpleNamespace

    from pyenroot.quickargs import read_options

    flags = {spelling: attribute for short, long, attribute in FLAGS for spelling in (short, long) if spelling}
    values = {spelling: attribute for short, long, attribute in VALUES for spelling in (short, long) if spelling}
    found: dict = {"debug": False, "verbose": 0, "verb": "start", "conf": None, "env": [], "rc": None, "root": False,
                   "rw": False, "mount": [], "pid": False, "net": False, "ipc": False, "uts": False}
    at = read_options(words, 0, flags, values, REPEATABLE, found)
    if at is None or at == len(words) or "--" in words[at:]:
        return None
    return SimpleNamespace(**found, target=words[at], command=list(words[at + 1:]))


def command_of(words) -> tuple[str, ...]:
    """The command after the options: a leading `--` only ends them."""
    command = tuple(words or ())
    return command[1:] if command[:1] == ("--",) else command


def start_options(args, target=None):
    """What `start` (or a bundle's runtime, with `target`: a launcher.Target) was asked, as StartOptions; a
    malformed --mount or --env is a usage error before anything starts."""
    from pathlib import Path

    from pyenroot.runtime import environ, fstab, plan
    from pyenroot.runtime.options import StartOptions

    mounts = tuple(plan.mount_from_entry(fstab.from_cli(spec)) for spec in args.mount)
    return StartOptions(
        target=target if target is not None else args.target,
        command=command_of(args.command),
        conf=Path(args.conf) if args.conf else None,
        rc=Path(args.rc) if args.rc else None,
        env=tuple(environ.cli_entry(entry) for entry in args.env),
        mounts=mounts,
        remap_root=True if args.root else None,
        writable=True if args.rw else None,
        namespaces=frozenset(ns for ns, wanted in (("pid", args.pid), ("net", args.net), ("ipc", args.ipc),
                                                   ("uts", args.uts)) if wanted),
    )


def start_container(options, settings, *, verbose: bool = False) -> int:
    """Start as the command line does: warnings on stderr and, with -v, the time of each step."""
    import sys
    import time

    from pyenroot.runtime import assemble

    started = time.perf_counter()

    def trace(step: str) -> None:
        print(f"pyenroot: {(time.perf_counter() - started) * 1000:7.1f} ms  {step}", file=sys.stderr, flush=True)

    return assemble.start(options, settings, trace=trace if verbose else lambda step: None)


def run(args, settings) -> int:
    return start_container(start_options(args), settings, verbose=getattr(args, "verbose", 0) > 0)
