"""`pyenroot export [-o IMAGE] [-f] NAME`."""


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", metavar="IMAGE", help="squashfs file to write (default NAME.sqsh)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("name", metavar="NAME", help="container name")


def run(args, settings) -> int:
    from pyenroot import storage

    storage.export_container(settings, args.name, args.output, force=args.force)
    return 0
