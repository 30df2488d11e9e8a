"""`pyenroot bundle [options] IMAGE`."""

from pyenroot.errors import NotImplementedYet


def add_arguments(parser) -> None:
    parser.add_argument("-a", "--all", action="store_true", help="include user configuration")
    parser.add_argument("-c", "--checksum", action="store_true", help="verify a checksum at each run")
    parser.add_argument("-d", "--desc", metavar="TEXT", help="description of the bundle")
    parser.add_argument("-o", "--output", metavar="BUNDLE", help="bundle file to write")
    parser.add_argument("-t", "--target", metavar="DIR", help="target directory used by --keep")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("image", metavar="IMAGE", help="squashfs image")


def run(args, settings) -> int:
    raise NotImplementedYet("bundle is not implemented yet")
