"""`pyenroot doctor`: what this machine supports."""

from pyenroot.errors import NotImplementedYet


def add_arguments(parser) -> None:
    parser.add_argument("--gpu", action="store_true", help="only the GPU section")


def run(args, settings) -> int:
    raise NotImplementedYet("doctor is not implemented yet")
