"""`pyenroot create [-n NAME] [-f] IMAGE`."""


def add_arguments(parser) -> None:
    parser.add_argument("-n", "--name", help="container name (default: image file name without .sqsh)")
    parser.add_argument("-f", "--force", action="store_true", help="replace an existing container")
    parser.add_argument("image", metavar="IMAGE", help="squashfs image file")


def run(args, settings) -> int:
    import sys

    from pyenroot.containers.create import create_container
    from pyenroot.image.progress import ImportProgress

    with ImportProgress(sys.stderr, verbose=getattr(args, "verbose", 0)) as progress:
        target = create_container(settings, args.image, args.name, force=args.force, progress=progress)
        progress.finish()
    # The same line as load's, on stderr: stdout stays free for what a script reads.
    print(f"[pyenroot] created container {target.name}", file=sys.stderr)
    return 0
