"""`pyenroot import [-a ARCH] [-o IMAGE] URI`."""


def add_arguments(parser) -> None:
    parser.add_argument("-a", "--arch", help="architecture of the image (uname -m or Go form, default: this host)")
    parser.add_argument("-o", "--output", metavar="IMAGE",
                        help="squashfs file to write, or a directory to write the default name into "
                             "(default: a name made from the URI, in the current directory)")
    parser.add_argument("uri", metavar="URI",
                        help="docker://[USER@][REGISTRY#]IMAGE[:TAG][@DIGEST], podman://, dockerd://, "
                             "oci-archive://PATH or docker-archive://PATH")


def run(args, settings) -> int:
    from pyenroot.image.importer import import_image

    import_image(args.uri, args.output, args.arch, settings, verbose=getattr(args, "verbose", 0))
    return 0
