"""`pyenroot start [options] NAME|IMAGE [COMMAND [ARG...]]`."""

import argparse


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
    command = parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]",
                                  help="command to run (default: the image's entrypoint, or a shell)")
    command.required = False  # it may be empty; argparse lists every positional as required when one is missing


def run(args, settings, target=None) -> int:
    """`target`: a launcher.Target to start instead of args.target (a bundle's unpacked image)."""
    import sys
    import time

    from pyenroot.runtime import startup

    def warn(message: str) -> None:
        print(f"pyenroot: warning: {message}", file=sys.stderr)

    started = time.perf_counter()

    def trace(step: str) -> None:
        print(f"pyenroot: {(time.perf_counter() - started) * 1000:7.1f} ms  {step}", file=sys.stderr, flush=True)

    verbose = getattr(args, "verbose", 0) > 0
    return startup.start(args, settings, warn=warn, trace=trace if verbose else lambda step: None,
                         target=target)
