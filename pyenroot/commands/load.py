"""`pyenroot load [-a ARCH] [-n NAME] [-f] URI`."""


def add_arguments(parser) -> None:
    parser.add_argument("-a", "--arch", help="architecture of the image (default: this host)")
    parser.add_argument("-n", "--name", help="container name (default from the URI)")
    parser.add_argument("-f", "--force", action="store_true", help="replace an existing container")
    parser.add_argument("uri", metavar="URI", help="image URI, as for import")


def run(args, settings) -> int:
    from pyenroot.image.importer import load_image

    load_image(args.uri, args.name, args.force, args.arch, settings, verbose=getattr(args, "verbose", 0))
    return 0
