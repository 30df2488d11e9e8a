"""`pyenroot exec [-e KEY[=VAL]] PID COMMAND [ARG...]`."""

import argparse

from pyenroot.errors import NotImplementedYet


def add_arguments(parser) -> None:
    parser.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VAL]",
                        help="environment variable to set (repeatable)")
    parser.add_argument("pid", metavar="PID", help="process ID of a process in the container")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]", help="command to run")


def run(args, settings) -> int:
    raise NotImplementedYet("exec is not implemented yet")
