"""The built-image cache: squashfs files by what they were built from, shared by `import`, `load` and Slurm steps.

`ROOT/squashfs/<key>.sqsh` with `<key>.json` beside it (what it was built from, its size, the merge's report);
the key hashes the manifest digest the reference resolved to, the platform, the provenance URI written into the
image, the squash options and the builder. An entry is used only when the directory and the file are trusted
by owner and mode (`trust`) and the file still looks like the squashfs that was recorded; otherwise it is
rebuilt. Readers hold a shared `flock` on `<key>.lock`; builders serialise on `<key>.build`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from pyenroot import __version__, squashfs, trust
from pyenroot.atomic import write_atomically
from pyenroot.content.blobs import hold_lock, release_lock, touch
from pyenroot.record import as_dict, factory, record

# Bump when the merge writes different bytes for the same layers (so that older entries are not reused).
BUILDER_VERSION = "1"
_KEY_FIELDS = ("reference_digest", "platform", "source_uri", "squash", "builder")


@record(frozen=True)
class BuildKey:
    """Everything the bytes of a built image depend on."""

    reference_digest: str  # what the URI resolved to (an index's digest, with `platform` choosing in it)
    platform: str
    source_uri: str  # written into /etc/rc as provenance
    squash: str  # the squash options, canonical
    builder: str  # the tool that builds, pyenroot's merge version, SOURCE_DATE_EPOCH

    @property
    def name(self) -> str:
        return hashlib.sha256(json.dumps(as_dict(self), sort_keys=True).encode()).hexdigest()


def squash_description(plan) -> str:
    """A SquashPlan's output-relevant part (the job count and notes change nothing in the image)."""
    fields = {k: v for k, v in as_dict(plan).items() if k not in ("jobs", "notes")}
    return json.dumps(fields, sort_keys=True)


def builder_identity(tool: str | None, epoch: str | None) -> str:
    """The builder tool by path, size and time (a cheap stand-in for its version), plus what else shapes bytes."""
    described = "none"
    if tool:
        with contextlib.suppress(OSError):
            st = os.stat(tool)
            described = f"{os.path.realpath(tool)}:{st.st_size}:{st.st_mtime_ns}"
    return f"pyenroot {__version__}/{BUILDER_VERSION}; {described}; epoch={epoch or ''}"


@record
class BuiltEntry:
    """What `<key>.json` records."""

    key: BuildKey
    size: int
    entries: int
    warnings: list[str] = factory(list)
    blobs: list[str] = factory(list)  # config and layers: which blobs this image uses
    created: float = 0.0

    def to_json(self) -> str:
        return json.dumps(as_dict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BuiltEntry:
        data = json.loads(text)
        key = BuildKey(**{k: str(data["key"][k]) for k in _KEY_FIELDS})
        return cls(key=key, size=int(data["size"]), entries=int(data["entries"]),
                   warnings=[str(w) for w in data.get("warnings", [])], blobs=[str(b) for b in data.get("blobs", [])],
                   created=float(data.get("created", 0.0)))


class BuiltImages:
    """The squashfs entries under `root/squashfs`; trusted like the blob cache (the user, root, `owners`)."""

    def __init__(self, root: Path, owners: Collection[int] = ()):
        self.dir = Path(os.path.abspath(root)) / "squashfs"
        self.owners = frozenset(owners)

    @classmethod
    def of(cls, settings) -> BuiltImages:
        return cls(settings.path("ENROOT_CACHE_PATH"), trust.uids_of(settings.get("PYENROOT_CACHE_OWNERS") or ""))

    def image(self, name: str) -> Path:
        return self.dir / f"{name}.sqsh"

    def record(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def use_lock(self, name: str) -> Path:
        return self.dir / f"{name}.lock"

    def unusable(self) -> str | None:
        """Why the cache directory cannot be used (someone else could add entries); it is created if missing."""
        if not os.path.lexists(self.dir):
            return None  # made when the first image is built
        return trust.untrusted(self.dir, "dir", owners=self.owners)

    def make(self) -> None:
        """Create the directory (0700, whatever the umask, like missing parents)."""
        from pyenroot.errors import StorageError

        try:
            for directory in (self.dir.parent, self.dir):
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the cache directory {self.dir}: {exc.strerror}",
                               hint="ENROOT_CACHE_PATH must be a directory you can read and write") from None

    def writable(self) -> bool:
        """Whether images can be built here (a cache that a site fills is only read by its users)."""
        return not os.path.lexists(self.dir) or os.access(self.dir, os.W_OK)

    def lookup(self, key: BuildKey) -> BuiltEntry | None:
        """The entry of `key` if it is there, trusted and intact; a damaged one is removed (then rebuilt)."""
        name = key.name
        path = self.image(name)
        try:
            entry = BuiltEntry.from_json(self.record(name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self.discard(name)
            return None
        problem = trust.untrusted(path, "file", owners=self.owners) or self._content_problem(path, entry)
        if entry.key != key or problem:
            self.discard(name)
            return None
        return entry

    @staticmethod
    def _content_problem(path: Path, entry: BuiltEntry) -> str | None:
        try:
            with open(path, "rb") as image:
                size = os.fstat(image.fileno()).st_size
                head = image.read(squashfs.SUPERBLOCK.size)
        except OSError as exc:
            return exc.strerror
        if size != entry.size:
            return f"is {size} bytes, {entry.size} were recorded"
        fault = squashfs.problem(head, size, path)
        return fault.message if fault else None

    def discard(self, name: str) -> None:
        """Remove an entry that must not be used (or is pruned): the record first, so that it is never trusted."""
        for path in (self.record(name), self.image(name)):
            with contextlib.suppress(OSError):
                path.unlink()

    @contextlib.contextmanager
    def building(self, key: BuildKey) -> Iterator[None]:
        """Concurrent builders of one key (steps on many nodes) wait for the first instead of building again."""
        self.make()
        fd = hold_lock(self.build_lock(key.name), exclusive=True)
        try:
            yield
        finally:
            release_lock(fd, self.build_lock(key.name))

    def build_lock(self, name: str) -> Path:
        return self.dir / f"{name}.build"

    def hold(self, name: str) -> int | None:
        """A shared lock on an entry: prune leaves it alone until `release` (None: a cache we only read, where
        we cannot lock)."""
        return hold_lock(self.use_lock(name), exclusive=False)

    def release(self, name: str, fd: int | None) -> None:
        release_lock(fd, self.use_lock(name))

    def add(self, key: BuildKey, entry: BuiltEntry) -> None:
        """Record a complete image already under `image(key.name)` (written there atomically)."""
        entry.created = time.time()
        write_atomically(self.record(key.name), entry.to_json(), mode=0o644)

    def used(self, name: str) -> None:
        touch(self.record(name))

    def entries(self) -> list[tuple[str, BuiltEntry | None, os.stat_result]]:
        """(name, record, stat: its mtime is the last use) of every entry; an image without a record (being
        recorded now, or left by a crash or an older version) has None and its own stat."""
        found: list[tuple[str, BuiltEntry | None, os.stat_result]] = []
        if not self.dir.is_dir():
            return found
        for image in sorted(self.dir.glob("[!.]*.sqsh")):
            name = image.name[:-len(".sqsh")]
            record: BuiltEntry | None = None
            try:
                st = image.stat()
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    record = BuiltEntry.from_json(self.record(name).read_text())
                    st = self.record(name).stat()
            except OSError:
                continue  # removed meanwhile
            found.append((name, record, st))
        return found

    def remove_unused(self, name: str) -> bool:
        """Remove an entry unless something holds it (a reader, a step, a builder); False when it was in use."""
        use = hold_lock(self.use_lock(name), exclusive=True, wait=False)
        if use is None:
            return False
        try:
            build = hold_lock(self.build_lock(name), exclusive=True, wait=False)
            if build is None:
                return False
            try:
                self.discard(name)
                self.use_lock(name).unlink(missing_ok=True)
                self.build_lock(name).unlink(missing_ok=True)
            finally:
                os.close(build)
        finally:
            os.close(use)
        return True


_FICLONE = 0x40049409


def place_copy(source: Path, fd: int) -> None:
    """Fill the open, empty file `fd` with `source`'s bytes: a reflink where the filesystem shares extents,
    else an in-kernel copy."""
    import fcntl

    with open(source, "rb") as src:
        try:
            fcntl.ioctl(fd, _FICLONE, src.fileno())
            return
        except OSError:
            pass
        remaining = os.fstat(src.fileno()).st_size
        try:
            while remaining > 0:
                copied = os.copy_file_range(src.fileno(), fd, remaining)
                if copied == 0:
                    break
                remaining -= copied
        except OSError:
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            src.seek(0)
            import shutil  # (only here: a Slurm step's cache lookup does without shutil, bz2 and lzma)

            with os.fdopen(os.dup(fd), "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
