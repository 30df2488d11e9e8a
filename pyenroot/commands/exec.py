"""`pyenroot exec [-e KEY[=VAL]] PID COMMAND [ARG...]`."""

import argparse
import os


def add_arguments(parser) -> None:
    parser.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VAL]",
                        help="environment variable to set (repeatable)")
    parser.add_argument("pid", metavar="PID", help="process ID of a process in the container")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]", help="command to run")


def run(args, settings) -> int:
    from pyenroot.runtime import attach

    # Real root keeps its privileges only with ENROOT_ALLOW_SUPERUSER, as for start.
    unprivileged = not (os.geteuid() == 0 and settings.flag("ENROOT_ALLOW_SUPERUSER"))
    return attach.attach(attach.parse_pid(args.pid), list(args.command), args.env, os.environ,
                         unprivileged=unprivileged)
