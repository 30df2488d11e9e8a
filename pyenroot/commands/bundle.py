"""`pyenroot bundle [-o BUNDLE] [-a] [-c] [-d TEXT] [-t DIR] [-f] IMAGE`."""

RUN_OPTIONS = """\
The bundle runs on a machine without pyenroot that has python3 (3.11 or later), tar, unsquashfs (or
rdsquashfs) and unprivileged user namespaces: ./BUNDLE [OPTIONS] [--] [COMMAND [ARG...]] unpacks the image
and starts it. Its options: -i/--info, -v/--verify, -k/--keep (unpack into the target directory and keep it),
-x/--extract (unpack and exit), -q/--quiet, and those of start: -c/--conf, -e/--env, --rc, -r/--root, -w/--rw,
-m/--mount, --pid, --net, --ipc, --uts. See ./BUNDLE --help."""


def add_arguments(parser) -> None:
    import argparse

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = RUN_OPTIONS
    parser.add_argument("-a", "--all", action="store_true",
                        help="include the user's configuration (hooks.d, mounts.d, environ.d of ENROOT_CONFIG_PATH) "
                             "and the ENROOT_* settings other than paths (or ENROOT_BUNDLE_ALL)")
    parser.add_argument("-c", "--checksum", action="store_true", help="check a SHA-256 of the bundle at each run "
                        "(or ENROOT_BUNDLE_CHECKSUM)")
    parser.add_argument("-d", "--desc", metavar="TEXT", help="description of the bundle (default: none)")
    parser.add_argument("-o", "--output", metavar="BUNDLE", help="bundle file to write (default: IMAGE without "
                        ".sqsh, plus .run)")
    parser.add_argument("-t", "--target", metavar="DIR", help="directory that --keep and --extract unpack into at run "
                        "time "
                        "(default: BUNDLE without .run, relative to where it runs)")
    parser.add_argument("-f", "--force", action="store_true",
                        help="replace an existing file (or ENROOT_FORCE_OVERRIDE)")
    parser.add_argument("image", metavar="IMAGE", help="squashfs image")


def run(args, settings) -> int:
    import sys

    from pyenroot.bundle.build import BundleRequest, make_bundle
    from pyenroot.errors import UsageError
    from pyenroot.image.progress import ImportProgress

    for option, value in (("output", args.output), ("target", args.target)):
        if value == "":  # not "the default": an empty value is a mistake (an unset variable, say)
            raise UsageError(f"the {option} name is empty", hint=f"leave out --{option} for the default")
    request = BundleRequest(image=args.image, output=args.output, target=args.target, description=args.desc,
                            all_config=args.all, checksum=args.checksum, force=args.force)
    with ImportProgress(sys.stderr, verbose=getattr(args, "verbose", 0)) as progress:
        make_bundle(settings, request, progress)
    return 0
