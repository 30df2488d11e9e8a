"""`pyenroot export [-o IMAGE] [-f] NAME`."""

from pyenroot.errors import NotImplementedYet


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", metavar="IMAGE", help="squashfs file to write (default NAME.sqsh)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("name", metavar="NAME", help="container name")


def run(args, settings) -> int:
    raise NotImplementedYet("export is not implemented yet")
