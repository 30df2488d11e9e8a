"""`pyenroot start [options] NAME|IMAGE [COMMAND] [ARG...]`."""

import argparse

from pyenroot.errors import NotImplementedYet


def add_arguments(parser) -> None:
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
    parser.add_argument("target", metavar="NAME|IMAGE", help="container name or squashfs image")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]",
                        help="command to run (default: the image's entrypoint, or a shell)")


def run(args, settings) -> int:
    raise NotImplementedYet("start is not implemented yet")
