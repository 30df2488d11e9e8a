"""The site-wide image store (PYENROOT_IMAGE_STORE): squashfs images an admin built once, read by every user.

`ROOT/images/<manifest hex>.<platform>.sqsh` and `ROOT/index.json` (each image's digests, platform, size and
checksum; which reference resolved to which digest, and when). The store's owner is the owner of ROOT; only it
(or root) writes there (`store add/remove`). A user's import takes an entry only when ROOT, `images/`, the index
and the entry are the owner's or root's, writable by nobody else, and no directory above ROOT lets others
replace it; the entry's size and checksum are checked once per node (a stamp in the user's runtime directory).
The index logic (`StoreIndex`) is pure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from pyenroot import trust
from pyenroot.atomic import write_atomically
from pyenroot.errors import StorageError, UsageError
from pyenroot.record import as_dict, factory, record

INDEX_VERSION = 1
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------ the index (pure)


@record(frozen=True)
class StoreEntry:
    """One squashfs image in the store."""

    name: str  # the file's name in images/, without .sqsh
    reference_digest: str  # what the reference resolved to (an index's digest, or the manifest's)
    manifest_digest: str  # the platform's manifest
    platform: str  # "os/architecture/variant", as the built-image cache spells it
    source_uri: str  # the provenance written into the image
    size: int
    sha256: str  # of the whole file, "sha256:HEX"
    entries: int = 0
    warnings: tuple[str, ...] = ()
    added: float = 0.0

    def matches(self, digest: str) -> bool:
        return digest in (self.reference_digest, self.manifest_digest)


@record(frozen=True)
class TagEntry:
    """A reference without a digest (`docker://REGISTRY#REPO:TAG`), as `store add` last resolved it."""

    reference: str
    platform: str
    digest: str  # the reference digest it resolved to
    resolved: float  # when


def entry_name(manifest_digest: str, platform: str) -> str:
    """The file name of an image: its manifest's hex digest and the platform (`linux-amd64`, `linux-arm-v7`)."""
    algorithm, _, hex_digest = manifest_digest.partition(":")
    if algorithm != "sha256" or len(hex_digest) != 64 or any(c not in "0123456789abcdef" for c in hex_digest):
        raise ValueError(f"not a sha256 digest: {manifest_digest}")
    return f"{hex_digest}.{'-'.join(part for part in platform.split('/') if part)}"


def tag_reference(registry: str, repository: str, tag: str | None) -> str:
    """How the index names a tag: enroot's URI form with the registry and an explicit tag."""
    return f"docker://{registry}#{repository}:{tag or 'latest'}"


@record
class StoreIndex:
    images: dict[str, StoreEntry] = factory(dict)
    tags: dict[tuple[str, str], TagEntry] = factory(dict)  # (reference, platform)

    def find(self, digest: str, platform: str) -> StoreEntry | None:
        """The image for a reference or manifest digest on `platform`."""
        for entry in self.images.values():
            if entry.platform == platform and entry.matches(digest):
                return entry
        return None

    def fresh_tag(self, reference: str, platform: str, now: float, ttl: float) -> StoreEntry | None:
        """The image a tag resolved to, when `store add` resolved it less than `ttl` seconds ago."""
        tag = self.tags.get((reference, platform))
        if tag is None or not 0 <= now - tag.resolved < ttl:
            return None
        return self.find(tag.digest, platform)

    def add(self, entry: StoreEntry, tag: TagEntry | None = None) -> None:
        self.images[entry.name] = entry
        if tag is not None:
            self.tags[(tag.reference, tag.platform)] = tag

    def knows(self, what: str) -> bool:
        """Whether `what` (a digest or a tag reference) names something in the index."""
        if what.startswith("sha256:"):
            return any(e.matches(what) for e in self.images.values())
        return any(reference == what for reference, _ in self.tags)

    def remove(self, what: str) -> list[StoreEntry]:
        """Remove a digest (its images on every platform, and the tags resolving to it) or a tag reference (its
        tags on every platform, and the images no other tag resolves to). The images removed."""
        if what.startswith("sha256:"):
            doomed = {e.name for e in self.images.values() if e.matches(what)}
            self.tags = {k: t for k, t in self.tags.items()
                         if not any(self.images[n].matches(t.digest) and self.images[n].platform == t.platform
                                    for n in doomed)}
        else:
            dropped = [t for k, t in self.tags.items() if k[0] == what]
            self.tags = {k: t for k, t in self.tags.items() if k[0] != what}
            doomed = set()
            for tag in dropped:
                entry = self.find(tag.digest, tag.platform)
                if entry is not None and not self._tagged(entry):
                    doomed.add(entry.name)
        return [self.images.pop(name) for name in sorted(doomed)]

    def _tagged(self, entry: StoreEntry) -> bool:
        return any(t.platform == entry.platform and entry.matches(t.digest) for t in self.tags.values())

    def tags_of(self, entry: StoreEntry) -> list[str]:
        return sorted(t.reference for t in self.tags.values() if t.platform == entry.platform
                      and entry.matches(t.digest))

    def to_json(self) -> str:
        return json.dumps({"version": INDEX_VERSION,
                           "images": [as_dict(e) for e in sorted(self.images.values(), key=lambda e: e.name)],
                           "tags": [as_dict(t) for t in sorted(self.tags.values(),
                                                              key=lambda t: (t.reference, t.platform))]},
                          indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StoreIndex:
        """Raises ValueError for anything that is not an index of this version."""
        try:
            data = json.loads(text)
            if data.get("version") != INDEX_VERSION:
                raise ValueError(f"unknown index version {data.get('version')!r}")
            index = cls()
            for item in data["images"]:
                entry = StoreEntry(**{**item, "warnings": tuple(str(w) for w in item.get("warnings", ()))})
                if entry.name != entry_name(entry.manifest_digest, entry.platform):
                    raise ValueError(f"entry {entry.name!r} is not named after its digest")
                index.images[entry.name] = entry
            for item in data["tags"]:
                tag = TagEntry(**item)
                index.tags[(tag.reference, tag.platform)] = tag
            return index
        except (AttributeError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed index: {exc}") from None


# --------------------------------------------------------------------------------------------- the files


def file_sha256(fd: int) -> str:
    """The checksum of an open file, read from its start."""
    hasher = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, _CHUNK):
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def _mode_problem(st: os.stat_result, wanted: str, owner: int) -> str | None:
    """What the store trusts: the owner's or root's, writable by nobody else (no group stores: see docs)."""
    return trust.private_problem(st, wanted, {owner, trust.ROOT_UID})


class SiteStore:
    """The store at `root`; `owner` is whoever owns the root directory."""

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))
        self.images_dir = self.root / "images"
        self.index_path = self.root / "index.json"

    @classmethod
    def of(cls, settings) -> SiteStore | None:
        value = settings.get("PYENROOT_IMAGE_STORE")
        return cls(Path(value)) if value else None

    def image(self, name: str) -> Path:
        return self.images_dir / f"{name}.sqsh"

    # ---- reading (every user) -------------------------------------------------------------------------------

    def owner(self) -> int:
        return os.lstat(self.root).st_uid

    def problem(self) -> str | None:
        """Why the store must not be read (None: the root, images/ and the index are trusted)."""
        try:
            st = os.lstat(self.root)
            owner = st.st_uid
            problem = _mode_problem(st, "dir", owner)
            if problem:
                return f"{self.root} {problem}"
            # The directories above: owned by the owner or root; a sticky one (/tmp) is fine.
            problem = trust.untrusted(self.root, "dir", uid=owner)
            if problem:
                return problem
            for path, wanted in ((self.images_dir, "dir"), (self.index_path, "file")):
                problem = _mode_problem(os.lstat(path), wanted, owner)
                if problem:
                    return f"{path} {problem}"
        except FileNotFoundError as exc:
            return f"{exc.filename} does not exist"
        except OSError as exc:
            return f"{exc.filename or self.root}: {exc.strerror}"
        return None

    def read_index(self) -> StoreIndex:
        try:
            return StoreIndex.from_json(self.index_path.read_text())
        except FileNotFoundError:
            return StoreIndex()
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise StorageError(f"cannot read the image store's index {self.index_path}: {exc}") from None

    def entry_problem(self, entry: StoreEntry) -> str | None:
        """Why the entry's file is not trusted (its owner and mode; its content is `verify`'s)."""
        path = self.image(entry.name)
        try:
            problem = _mode_problem(os.lstat(path), "file", self.owner())
        except OSError as exc:
            return f"{path}: {exc.strerror}"
        return f"{path} {problem}" if problem else None

    def verify(self, entry: StoreEntry, stamps: Path | None) -> str | None:
        """Why the entry's bytes are not the ones `store add` recorded (None: they are). The checksum is read
        once per node: `stamps` (the user's runtime directory) remembers the file that was checked."""
        path = self.image(entry.name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            return f"{path}: {exc.strerror}"
        try:
            st = os.fstat(fd)
            if st.st_size != entry.size:
                return f"{path} is {st.st_size} bytes, {entry.size} were recorded"
            seen = f"{entry.sha256} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}\n"
            stamp = stamps / entry.name if stamps is not None else None
            with contextlib.suppress(OSError):
                if stamp is not None and stamp.read_text() == seen:
                    return None
            if file_sha256(fd) != entry.sha256:
                return f"{path} does not match the checksum recorded when it was added"
        finally:
            os.close(fd)
        if stamp is not None:
            with contextlib.suppress(OSError):
                write_atomically(stamp, seen)
        return None

    # ---- writing (the owner) --------------------------------------------------------------------------------

    def check_exists(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"the image store {self.root} does not exist",
                               hint="`pyenroot store add` as its owner creates it; check PYENROOT_IMAGE_STORE")

    def prepare_for_writing(self, *, create: bool = True) -> None:
        """Create the store (0755) if missing (with `create`); refuse a caller that is not its owner or root, or
        a store that its users would not trust."""
        if not create:
            self.check_exists()
        for directory in (self.root, self.images_dir):
            try:
                if not os.path.lexists(directory):
                    directory.mkdir()
                    directory.chmod(0o755)  # readable by every user whatever the umask, writable by the owner
            except FileExistsError:
                pass  # made meanwhile: checked below
            except FileNotFoundError:
                raise StorageError(f"cannot create the image store {self.root}: its parent does not exist") from None
            except OSError as exc:
                raise StorageError(f"cannot create the image store {directory}: {exc.strerror}") from None
        owner = self.owner()
        if os.getuid() not in (owner, trust.ROOT_UID):
            raise UsageError(f"the image store {self.root} belongs to {trust.owner_label(owner)}",
                             hint="run `pyenroot store` as the store's owner")
        problem = trust.untrusted(self.root, "dir", uid=owner) or _mode_problem(os.lstat(self.root), "dir", owner) \
            or _mode_problem(os.lstat(self.images_dir), "dir", owner)
        if problem:
            raise trust.UntrustedPathError(f"users would not trust the image store: {problem}",
                                           hint="make it writable only by its owner (chmod 0755)")

    @contextlib.contextmanager
    def writing(self) -> Iterator[StoreIndex]:
        """The index, under the store's lock (one writer at a time: cron and an admin); written back, atomically,
        when the block ends without an error."""
        from pyenroot.content.blobs import hold_lock, release_lock

        lock = self.root / ".lock"
        fd = hold_lock(lock, exclusive=True)
        try:
            index = self.read_index()
            yield index
            write_atomically(self.index_path, index.to_json(), mode=0o644)
        finally:
            release_lock(fd, lock)

    def remove_files(self, entries: list[StoreEntry]) -> None:
        """After the index no longer names them (a container started from one keeps its open file)."""
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                self.image(entry.name).unlink()

