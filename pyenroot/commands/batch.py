"""`pyenroot batch CONFIG [COMMAND] [ARG...]`; usable as a `#!` interpreter."""

import argparse

from pyenroot.errors import NotImplementedYet


def add_arguments(parser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="batch configuration file with #ENROOT_ directives")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]", help="command to run")


def run(args, settings) -> int:
    raise NotImplementedYet("batch is not implemented yet")
