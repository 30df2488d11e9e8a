"""`pyenroot export [-o IMAGE] [-f] NAME`."""


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", metavar="IMAGE", help="squashfs file to write (default NAME.sqsh)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("name", metavar="NAME", help="container name")


def run(args, settings) -> int:
    import sys

    from pyenroot.containers.export import export_container
    from pyenroot.errors import UsageError
    from pyenroot.image.progress import ImportProgress

    if args.output == "":  # not "the default": an empty value is a mistake (an unset variable, say)
        raise UsageError("the output file name is empty", hint="leave out -o to write NAME.sqsh")
    with ImportProgress(sys.stderr, verbose=getattr(args, "verbose", 0)) as progress:
        export_container(settings, args.name, args.output, force=args.force, progress=progress)
        progress.finish()
    return 0
