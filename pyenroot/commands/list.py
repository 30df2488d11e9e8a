"""`pyenroot list [-f|--fancy] [--json]`."""

from pyenroot.errors import NotImplementedYet


def add_arguments(parser) -> None:
    parser.add_argument("-f", "--fancy", action="store_true", help="show running processes and their state")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args, settings) -> int:
    raise NotImplementedYet("list is not implemented yet")
