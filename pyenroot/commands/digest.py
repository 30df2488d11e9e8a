"""`pyenroot digest [-a ARCH] URI`: print the digest of the image's manifest for one platform."""


def add_arguments(parser) -> None:
    parser.add_argument("-a", "--arch", help="architecture (uname -m or Go form, default: this host)")
    parser.add_argument("uri", metavar="URI", help="docker://[USER@][REGISTRY#]IMAGE[:TAG][@DIGEST]")


def run(args, settings) -> int:
    from pyenroot.errors import UsageError
    from pyenroot.registry.source import RegistrySource
    from pyenroot.registry.uri import parse_uri

    ref = parse_uri(args.uri)
    if ref.scheme != "docker":
        raise UsageError(f"digest works on registry images (docker://), not {ref.scheme}://")
    print(RegistrySource(ref, settings).manifest_digest(args.arch))
    return 0
