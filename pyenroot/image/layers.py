"""Merge planning over layer tar headers: which entries of which layer end up in the image (pure).

Layers are visited top first, and within a layer in archive order, so every entry is decided the moment
its header is read: whatever upper layers hold at its path (or above it) is already known. The rules
are those of OCI layers applied with overlay semantics, each layer being a tree of its own:

- `.wh.NAME` hides NAME (and all below it) in lower layers; `.wh..wh..opq` hides everything below its
  directory in lower layers. Neither applies to entries of its own layer. Other `.wh..wh.*` names
  (aufs internals) are dropped with a warning.
- A non-directory hides everything at or below its path in lower layers; a directory replaces a lower
  non-directory and merges with a lower directory (the top-most explicit directory entry gives the
  attributes; a directory that a layer only implies, through entries below it, takes a lower explicit one's).
- Within one layer the first entry of a path wins; a later duplicate is dropped with a warning.

Hostile or unsupported input is neutralised, never followed, each case with a warning naming the entry:

- names with `..` components are dropped; absolute names are made relative (as tar does);
- an entry below a non-directory of its own layer (a write through a symlink) is dropped, and so is a
  non-directory at a path its own layer already uses as a directory. Below an upper non-directory an
  entry is simply hidden. So every ancestor of every surviving entry is a directory of the final tree:
  nothing can be written through a symlink, which is what makes extracting the merged stream with
  `tar -x` into an empty directory safe (`load`).
- hard links must name a regular file of the image (after normalisation, no `..`); a link to a file
  that an upper layer shadows gets that file's content (the first such link becomes a copy of it, the
  others link to the copy); a link to something else or to nothing is dropped;
- whiteouts naming `.`, `..` or an empty name are dropped;
- device nodes are never created: character and block devices are dropped (FIFOs are kept).

File modes (see `sanitize_mode`): no setuid or setgid bit survives on a non-directory. Inside an
unprivileged container such a bit gains nothing (the image's root is not the caller's to become), and
outside it, in a root filesystem unpacked by `load` or `create`, a setuid file would lend the owner's
identity to anyone able to run it. The owner always gets read access, directories get u+rwx and files
with any execute bit u+x (as enroot's unpacking does), so the owner can read and later remove
everything. Ownership becomes root's (enroot's `-all-root`). Only `user.*` extended attributes are kept:
file capabilities (`security.capability`) are a privilege like setuid, `trusted.*` belong to overlayfs.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from enum import Enum

from pyenroot.image.pathtable import PathTable, join_path

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

# Kinds of tar entries this module reasons about.
FILE, DIR, SYMLINK, HARDLINK, FIFO, CHAR, BLOCK, OTHER = "file", "dir", "symlink", "hardlink", "fifo", "char", \
    "block", "other"
DEVICE_KINDS = frozenset({CHAR, BLOCK})

# What a path of the (partial) merged tree holds: a kind plus flags.
_K_DIR, _K_NONDIR, _K_WHITEOUT = 1, 2, 3
_KIND_MASK = 3
_EXPLICIT = 4  # a directory that has had its own header (not only implied by entries below it)
_OPAQUE = 8  # a directory whose content in lower layers is hidden
_REGULAR = 16  # a non-directory that is a regular file (a valid hard link target)
_COVERED = 32  # a directory with an emitted entry below it (so it exists in the stream)

# What the layer being read holds at a path, as one int of its table: the path's value in the layer's own
# tree ("seen": a kind plus the flags above), its value among the paths the layer adds to the merged tree
# (survivor; 0 if none), and marks.
_SEEN_MASK = 0x3F
_SURVIVOR_SHIFT = 6
_SURVIVOR_MASK = 0x3F << _SURVIVOR_SHIFT
_FILE = 1 << 12  # a regular file of this layer (a valid hard link target) ...
_FILE_EMITTED = 1 << 13  # ... that is not shadowed by upper layers
_WHITED_OUT = 1 << 14  # a whiteout of this layer names the path
_OPAQUE_HERE = 1 << 15  # lower layers' content below the path is hidden (opaque marker, or a hidden non-directory)
_BLOCK_KNOWN = 1 << 16  # cache of _upper_blocks_below for a directory: known ...
_BLOCKED = 1 << 17  # ... and its answer

_KEPT_XATTR_PREFIX = "user."


class Action(Enum):
    EMIT = "emit"  # write the entry (possibly renamed, or turned into a link) to the merged stream
    HIDDEN = "hidden"  # shadowed by an upper layer: normal, silent
    DROPPED = "dropped"  # refused: hostile, unsupported or conflicting; `warning` says why
    WHITEOUT = "whiteout"  # a whiteout or opaque marker: affects lower layers, not written
    DEFERRED = "deferred"  # a hard link decided after its layer (materialised copy) or after all layers


@dataclass(frozen=True)
class Header:
    """What the planner needs from a tar header."""

    name: str
    kind: str
    linkname: str = ""


@dataclass(frozen=True)
class Decision:
    action: Action
    path: str = ""  # normalised path of the entry ("" for the root directory)
    link: str = ""  # for an emitted hard link: normalised target path
    warning: str | None = None


@dataclass(frozen=True)
class Materialization:
    """A layer's file shadowed by upper layers but reached by hard links of its own layer.

    `target` is the file's path in the layer; `copy` becomes a regular file with its content;
    `links` become hard links to `copy`.
    """

    target: str
    copy: str
    links: tuple[str, ...] = ()


@dataclass(frozen=True)
class CrossLink:
    """A hard link to a file outside its own layer, emitted after all layers if the target exists."""

    path: str
    target: str


class HostileEntry(ValueError):
    """A tar name that cannot be placed inside the image."""


def normalize_name(name: str) -> tuple[str, bool]:
    """`./a//b/` -> (`a/b`, False); `/etc/x` -> (`etc/x`, True). Raises HostileEntry on `..`."""
    absolute = name.startswith("/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise HostileEntry(f"{name!r} leaves the image (`..`)")
    if any("\0" in p for p in parts):
        raise HostileEntry(f"{name!r} contains a NUL byte")
    return "/".join(parts), absolute


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def ancestors(path: str) -> list[str]:
    """Proper ancestors, outermost first: `a/b/c` -> [`a`, `a/b`] (the root, "", is left out)."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def sanitize_mode(kind: str, mode: int) -> int:
    """Permission bits as written into the image; see the module docstring for why."""
    mode &= 0o7777
    if kind == DIR:
        return mode | 0o700
    if kind == SYMLINK:
        return mode
    mode &= ~(stat.S_ISUID | stat.S_ISGID)
    mode |= 0o400
    if mode & 0o111:
        mode |= 0o100
    return mode


def kept_xattrs(xattrs: dict[str, str]) -> dict[str, str]:
    """Extended attributes that may travel into the image (only `user.*`)."""
    return {k: v for k, v in xattrs.items() if k.startswith(_KEPT_XATTR_PREFIX)}


class _Layer:
    """What the layer being read holds so far: one table of path -> bits (see _SEEN_MASK), and hard links."""

    def __init__(self, label: str):
        self.label = label
        self.table = PathTable(width=4)
        self.aliases: dict[str, str] = {}  # hard link path -> the file it reaches
        self.materialize: dict[str, list[str]] = {}  # hidden file -> links that need it
        self.bits = self.table.value  # path -> its bits, 0 where the layer has nothing


def _fold(upper: dict[str, int], name: str, bits: int, *, is_root: bool) -> None:
    """Apply what a finished layer holds at a path (`name` in the merged tree's directory `upper`) to it."""
    current = upper.get(name)
    value = (bits & _SURVIVOR_MASK) >> _SURVIVOR_SHIFT
    if value:
        if current is None:
            current = value
        elif current & _KIND_MASK == _K_DIR and value & _KIND_MASK == _K_DIR:
            current |= value & (_EXPLICIT | _COVERED)
    # A whiteout under a directory of an upper layer (or of this one): the directory stays, what lower
    # layers have in it goes (it becomes opaque).
    if bits & _WHITED_OUT:
        if current is None:
            current = _K_WHITEOUT
        elif current & _KIND_MASK == _K_DIR:
            current |= _OPAQUE
    if bits & _OPAQUE_HERE and current is None and is_root:
        current = _K_DIR  # the root, opaque
    if bits & _OPAQUE_HERE and current is not None and current & _KIND_MASK == _K_DIR:
        current |= _OPAQUE
    if current is not None:
        upper[name] = current


class MergePlanner:
    """Decides entry by entry, top layer first, what the merged image holds. No I/O."""

    def __init__(self, max_warnings: int = 50):
        self._upper = PathTable(width=1)  # the merged tree of the layers above the current one (never 0)
        self._layer: _Layer | None = None
        self._cross_links: list[CrossLink] = []
        self.warnings: list[str] = []
        self.suppressed_warnings = 0
        self._max_warnings = max_warnings
        self._dev_nodes = 0  # device nodes under dev/: every base image has some, so one summary line

    # -------------------------------------------------------------------------------- layers

    def start_layer(self, label: str) -> None:
        if self._layer is not None:
            raise RuntimeError("previous layer not finished")
        self._layer = _Layer(label)

    def finish_layer(self) -> list[Materialization]:
        """Fold the layer into the merged tree; return the shadowed files its hard links still need."""
        layer = self._require_layer()
        for directory, children in layer.table.drain():
            upper = self._upper.children(directory)  # only this directory's dict changes in the loop
            for name, bits in children.items():
                if bits & (_SURVIVOR_MASK | _WHITED_OUT | _OPAQUE_HERE):
                    _fold(upper, name, bits, is_root=not directory and not name)
        self._upper.pack()
        self._layer = None
        return [Materialization(target, links[0], tuple(links[1:])) for target, links in layer.materialize.items()]

    def finish(self) -> list[CrossLink]:
        """After the bottom layer: the cross-layer hard links whose target is a regular file of the image."""
        kept = []
        for link in self._cross_links:
            if self._upper.value(link.target) & _REGULAR and self._survives(link.target):
                kept.append(link)
            else:
                self._warn(f"{link.path}: hard link to {link.target!r}, which is not a file of the image: dropped")
        if self._dev_nodes:
            nodes = f"{self._dev_nodes} device node{'s' if self._dev_nodes > 1 else ''}"
            self.warnings.append(f"{nodes} under dev/ not created; /dev comes from the host at start")
        return kept

    # ------------------------------------------------------------------------------- entries

    def decide(self, header: Header) -> Decision:
        layer = self._require_layer()
        try:
            path, absolute = normalize_name(header.name)
        except HostileEntry as exc:
            return self._drop("", f"{layer.label}: entry {exc}")
        if absolute:
            self._warn(f"{layer.label}: absolute name {header.name!r} taken as relative to the image root")
        if path == "":
            return Decision(Action.HIDDEN, "")  # the root directory itself: its attributes are not taken
        base = path.rpartition("/")[2]
        if base.startswith(WHITEOUT_PREFIX):
            return self._whiteout(layer, path, base)
        if header.kind in DEVICE_KINDS:
            return self._device_node(layer, path)
        if header.kind == OTHER:
            return self._drop(path, f"{path}: unsupported tar entry type: dropped")
        # The path's bits and its parent's, read once: the helpers below only ever add bits to ancestors, so
        # a bit seen set in `above` stays set.
        here, above = layer.bits(path), layer.bits(parent_of(path))
        conflict = self._layer_conflict(layer, path, header.kind == DIR, here, above)
        if conflict:
            return self._drop(path, f"{layer.label}: {path}: {conflict}: dropped")
        if header.kind == HARDLINK:
            return self._hardlink(layer, path, header.linkname, here, above)
        return self._place(layer, path, header.kind, here, above)

    # ------------------------------------------------------------------------------- helpers

    def _require_layer(self) -> _Layer:
        if self._layer is None:
            raise RuntimeError("no layer started")
        return self._layer

    def _warn(self, message: str) -> None:
        if len(self.warnings) < self._max_warnings:
            self.warnings.append(message)
        else:
            self.suppressed_warnings += 1

    def _drop(self, path: str, warning: str) -> Decision:
        self._warn(warning)
        return Decision(Action.DROPPED, path, warning=warning)

    def _device_node(self, layer: _Layer, path: str) -> Decision:
        """Never created (an unprivileged user cannot, and a node would open the host's device). Those under
        dev/ are counted for one summary line; one elsewhere is unusual enough to be named with its layer."""
        if path.startswith("dev/"):
            self._dev_nodes += 1
            return Decision(Action.DROPPED, path)
        return self._drop(path, f"{layer.label}: {path}: device node not created")

    def _whiteout(self, layer: _Layer, path: str, base: str) -> Decision:
        directory = parent_of(path)
        if base == OPAQUE_MARKER:
            target, opaque = directory, True
        elif base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return self._drop(path, f"{layer.label}: {path}: unsupported aufs whiteout: dropped")
        else:
            name = base[len(WHITEOUT_PREFIX):]
            if name in ("", ".", ".."):
                return self._drop(path, f"{layer.label}: {path}: whiteout of {name!r} refused")
            target, opaque = join_path(directory, name), False
        conflict = self._layer_conflict(layer, directory, True, layer.bits(directory),
                                        layer.bits(parent_of(directory))) if directory else None
        if conflict:
            return self._drop(path, f"{layer.label}: {path}: {conflict}: dropped")
        # The marker's directory is part of this layer, so it exists in the merged tree (unless hidden).
        self._imply_dirs(layer, directory, with_self=True)
        if directory and self._reachable_dir(directory):
            self._imply_survivor_dirs(layer, directory)
            bits = layer.bits(directory)
            if not bits & _SURVIVOR_MASK:
                layer.table[directory] = bits | _K_DIR << _SURVIVOR_SHIFT
        # An opaque root ("") hides every lower layer; OCI allows it.
        layer.table[target] = layer.bits(target) | (_OPAQUE_HERE if opaque else _WHITED_OUT)
        return Decision(Action.WHITEOUT, target)

    def _reachable_dir(self, path: str) -> bool:
        """Would a directory at `path` given by the current layer be part of the merged tree?"""
        if self._upper.value("") & _OPAQUE or self._upper_blocks_below(parent_of(path)):
            return False
        value = self._upper.value(path)
        return not value or value & _KIND_MASK == _K_DIR

    @staticmethod
    def _layer_conflict(layer: _Layer, path: str, is_dir: bool, here: int, above: int) -> str | None:
        """Why `path` (whose bits in the layer are `here`, its parent's `above`) cannot be placed given earlier
        entries of its own layer, or None."""
        parent = parent_of(path)
        # A parent already in this layer vouches for every ancestor (see _imply_dirs).
        known = above & _SEEN_MASK if parent else _K_DIR
        if known & _KIND_MASK == _K_NONDIR:
            return f"below {parent!r}, which is not a directory in this layer (write through a link)"
        for ancestor in [] if known else ancestors(path):
            if layer.bits(ancestor) & _KIND_MASK == _K_NONDIR:
                return f"below {ancestor!r}, which is not a directory in this layer (write through a link)"
        value = here & _SEEN_MASK
        if not value:
            return None
        if value & _KIND_MASK == _K_DIR and is_dir:
            return None
        if value & _KIND_MASK == _K_DIR:
            return "a directory of this layer already has this path"
        return "duplicate entry in this layer"

    def _upper_blocks_below(self, directory: str) -> bool:
        """Do upper layers hide what the current layer puts below `directory` ("" = the root)?

        Cached per layer in the directory's bits: the upper tree does not change while a layer is read, and
        siblings share parents.
        """
        layer = self._require_layer()
        bits = layer.bits(directory)
        if bits & _BLOCK_KNOWN:
            return bool(bits & _BLOCKED)
        blocked = bool(self._upper.value("") & _OPAQUE)
        if directory and not blocked:
            blocked = self._upper_blocks_below(parent_of(directory))
            value = self._upper.value(directory)
            if not blocked and value:
                blocked = value & _KIND_MASK != _K_DIR or bool(value & _OPAQUE)
        # Only ancestors' bits changed meanwhile: `bits` is still this directory's.
        layer.table[directory] = bits | _BLOCK_KNOWN | (_BLOCKED if blocked else 0)
        return blocked

    def _hidden_by_upper(self, path: str, is_dir: bool, above: int = 0) -> bool:
        """Do upper layers hide `path`? (`above`: its parent's bits, if known)"""
        blocked = bool(above & _BLOCKED) if above & _BLOCK_KNOWN else self._upper_blocks_below(parent_of(path))
        if blocked:
            return True
        value = self._upper.value(path)
        if not value:
            return False
        if value & _KIND_MASK != _K_DIR or not is_dir:
            return True
        return bool(value & _EXPLICIT)

    def _survives(self, path: str) -> bool:
        """Is `path`, known to the merged tree, reachable (no upper non-directory or opaque above it)?"""
        return all((self._upper.value(a) or _K_DIR) & _KIND_MASK == _K_DIR for a in ancestors(path))

    @staticmethod
    def _imply_dirs(layer: _Layer, path: str, *, with_self: bool) -> None:
        # Walk up until a known path: whatever is known already has its ancestors recorded.
        directory = path if with_self else parent_of(path)
        while directory:
            bits = layer.bits(directory)
            if bits & _SEEN_MASK:
                return
            layer.table[directory] = bits | _K_DIR
            directory = parent_of(directory)

    @staticmethod
    def _imply_survivor_dirs(layer: _Layer, path: str) -> None:
        """Record the ancestors of an emitted entry: directories of the merged tree, present in the stream."""
        directory = parent_of(path)
        while directory:
            bits = layer.bits(directory)
            if bits & _COVERED << _SURVIVOR_SHIFT:
                return
            if not bits & _SURVIVOR_MASK:
                bits |= _K_DIR << _SURVIVOR_SHIFT
            layer.table[directory] = bits | _COVERED << _SURVIVOR_SHIFT
            directory = parent_of(directory)

    @staticmethod
    def _hidden(layer: _Layer, path: str, is_dir: bool, here: int) -> Decision:
        # A shadowed non-directory still ends the merge of the upper directory at its path: what lower
        # layers hold below it stays hidden (overlayfs stops at a non-directory too).
        layer.table[path] = here if is_dir else here | _OPAQUE_HERE
        return Decision(Action.HIDDEN, path)

    def _place(self, layer: _Layer, path: str, kind: str, here: int, above: int) -> Decision:
        # `here` stays the path's bits throughout: the helpers below change only its ancestors'.
        is_dir = kind == DIR
        value = (_K_DIR | _EXPLICIT) if is_dir else (_K_NONDIR | (_REGULAR if kind == FILE else 0))
        if here & _EXPLICIT:
            return Decision(Action.HIDDEN, path)  # a repeated directory entry: the first one counts
        if not above & _SEEN_MASK:
            self._imply_dirs(layer, path, with_self=False)
        here = here & ~_SEEN_MASK | value
        hidden = self._hidden_by_upper(path, is_dir, above)
        if kind == FILE:
            here = here & ~_FILE_EMITTED | (_FILE if hidden else _FILE | _FILE_EMITTED)
        if hidden:
            return self._hidden(layer, path, is_dir, here)
        if not above & _COVERED << _SURVIVOR_SHIFT:
            self._imply_survivor_dirs(layer, path)
        layer.table[path] = here & ~_SURVIVOR_MASK | value << _SURVIVOR_SHIFT
        return Decision(Action.EMIT, path)

    def _hardlink(self, layer: _Layer, path: str, linkname: str, here: int, above: int) -> Decision:
        try:
            target, _ = normalize_name(linkname)
        except HostileEntry as exc:
            return self._drop(path, f"{layer.label}: {path}: hard link target {exc}: dropped")
        if not target:
            return self._drop(path, f"{layer.label}: {path}: hard link to the root directory: dropped")
        target = layer.aliases.get(target, target)
        target_bits = layer.bits(target)
        if not target_bits & _SEEN_MASK:
            return self._cross_layer_link(layer, path, target, here, above)
        if not target_bits & _FILE:
            return self._drop(path, f"{layer.label}: {path}: hard link to {target!r}, not a regular file: dropped")
        self._imply_dirs(layer, path, with_self=False)
        here = here & ~_SEEN_MASK | _K_NONDIR | _REGULAR
        layer.aliases[path] = target
        if self._hidden_by_upper(path, False, above):
            return self._hidden(layer, path, False, here)
        self._imply_survivor_dirs(layer, path)
        layer.table[path] = here & ~_SURVIVOR_MASK | (_K_NONDIR | _REGULAR) << _SURVIVOR_SHIFT
        if target_bits & _FILE_EMITTED:
            return Decision(Action.EMIT, path, link=target)
        # The target is shadowed above: this link must carry the content the layer gave it.
        layer.materialize.setdefault(target, []).append(path)
        return Decision(Action.DEFERRED, path, link=target)

    def _cross_layer_link(self, layer: _Layer, path: str, target: str, here: int, above: int) -> Decision:
        self._imply_dirs(layer, path, with_self=False)
        here = here & ~_SEEN_MASK | _K_NONDIR | _REGULAR
        if self._hidden_by_upper(path, False, above):
            return self._hidden(layer, path, False, here)
        self._imply_survivor_dirs(layer, path)
        layer.table[path] = here & ~_SURVIVOR_MASK | (_K_NONDIR | _REGULAR) << _SURVIVOR_SHIFT
        self._cross_links.append(CrossLink(path, target))
        return Decision(Action.DEFERRED, path, link=target)

    # ------------------------------------------------------------------------------ queries

    def unwritten_directories(self) -> list[str]:
        """After all layers: directories of the merged tree that no entry of the stream creates (a layer
        implied them only through a whiteout or opaque marker), parents first."""
        candidates = [path for path, value in self._upper.items()
                      if path and value & _KIND_MASK == _K_DIR and not value & (_EXPLICIT | _COVERED)]
        return sorted(path for path in candidates if self._survives(path))  # (a lookup may thaw: not while iterating)

    def can_add_directory(self, path: str) -> bool:
        """After all layers: may a directory be added at `path` (absent, and no non-directory above it)?"""
        for ancestor in ancestors(path):
            value = self._upper.value(ancestor)
            if value and value & _KIND_MASK != _K_DIR:
                return False
        value = self._upper.value(path)
        return not value or value & _KIND_MASK == _K_WHITEOUT

    def has_directory(self, path: str) -> bool:
        value = self._upper.value(path)
        return bool(value) and value & _KIND_MASK == _K_DIR and self._survives(path)
