"""`pyenroot store add [-a ARCH] URI...`, `store list [--json]`, `store remove REF|DIGEST...`: the site-wide image
store (PYENROOT_IMAGE_STORE), run by its owner; users only read it."""

from __future__ import annotations

import json


def add_arguments(parser) -> None:
    from pyenroot.cliparser import Parser

    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser, required=True)
    adding = actions.add_parser("add", help="build images into the store, or refresh their tags (the owner)")
    adding.add_argument("-a", "--arch", help="the platform's architecture (default: this machine's)")
    adding.add_argument("uris", metavar="URI", nargs="+", help="docker://[USER@][REGISTRY#]IMAGE[:TAG|@DIGEST]")
    listing = actions.add_parser("list", help="the store's images: platform, size, tags, digests")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    removing = actions.add_parser("remove", help="remove a tag (and the images only it names) or a digest")
    removing.add_argument("what", metavar="REF|DIGEST", nargs="+",
                          help="docker://REGISTRY#IMAGE:TAG as listed, or sha256:HEX")


def _store(settings):
    from pyenroot.errors import UsageError
    from pyenroot.image.sitestore import SiteStore

    store = SiteStore.of(settings)
    if store is None:
        raise UsageError("store: PYENROOT_IMAGE_STORE is not set", hint="set it in enroot.conf or the environment")
    return store


def _add(args, settings) -> None:
    from pyenroot.image.cached_images import store_add

    for uri in args.uris:
        entry, built = store_add(uri, args.arch, settings, verbose=getattr(args, "verbose", 0))
        what = "added" if built else "up to date"
        print(f"{what} {uri}: {entry.reference_digest} {entry.platform.rstrip('/')} ({entry.name}.sqsh)")


def _list(args, settings) -> None:
    from pyenroot.image.progress import human_size

    store = _store(settings)
    store.check_exists()
    index = store.read_index()
    entries = sorted(index.images.values(), key=lambda e: (e.source_uri, e.platform))
    if args.json:
        print(json.dumps([{"name": e.name, "path": str(store.image(e.name)), "platform": e.platform,
                           "reference_digest": e.reference_digest, "manifest_digest": e.manifest_digest,
                           "size": e.size, "sha256": e.sha256, "added": e.added, "source_uri": e.source_uri,
                           "tags": index.tags_of(e)} for e in entries], indent=1))
        return
    for e in entries:
        tags = " ".join(index.tags_of(e)) or e.source_uri
        print(f"{e.reference_digest} {e.platform.rstrip('/'):16} {human_size(e.size):>9}  {tags}")
    print(f"total {human_size(sum(e.size for e in entries))} in {len(entries)} images")


def _index_key(what: str) -> str:
    """A digest as given; a reference as the index spells it (its digest if it has one)."""
    from pyenroot.errors import UsageError
    from pyenroot.image.sitestore import tag_reference
    from pyenroot.registry.uri import parse_uri

    if what.startswith("sha256:"):
        return what
    ref = parse_uri(what)
    if ref.scheme != "docker":
        raise UsageError(f"store remove: not a registry image or a digest: {what}")
    return ref.digest or tag_reference(ref.registry, ref.repository, ref.tag)


def _remove(args, settings) -> None:
    from pyenroot.errors import UsageError

    store = _store(settings)
    store.prepare_for_writing(create=False)
    for what in args.what:
        key = _index_key(what)
        with store.writing() as index:
            if not index.knows(key):
                raise UsageError(f"store remove: no such image in the store: {what}",
                                 hint="`pyenroot store list` names what it holds")
            removed = index.remove(key)
        store.remove_files(removed)
        print(f"removed {what} ({len(removed)} images)")


def run(args, settings) -> int:
    {"add": _add, "list": _list, "remove": _remove}[args.action](args, settings)
    return 0
