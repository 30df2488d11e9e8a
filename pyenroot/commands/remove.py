"""`pyenroot remove [-f] NAME...`."""

from pyenroot.errors import NotImplementedYet


def add_arguments(parser) -> None:
    parser.add_argument("-f", "--force", action="store_true", help="do not ask; also remove running containers")
    parser.add_argument("names", nargs="+", metavar="NAME", help="container names")


def run(args, settings) -> int:
    raise NotImplementedYet("remove is not implemented yet")
