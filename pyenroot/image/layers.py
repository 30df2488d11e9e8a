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
from dataclasses import dataclass, field
from enum import Enum

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


@dataclass
class _Layer:
    """What the layer being read holds so far."""

    label: str
    seen: dict[str, int] = field(default_factory=dict)  # every path of this layer (kept or hidden)
    survivors: dict[str, int] = field(default_factory=dict)  # paths this layer adds to the merged tree
    whiteouts: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)
    files: dict[str, bool] = field(default_factory=dict)  # regular file path -> emitted?
    aliases: dict[str, str] = field(default_factory=dict)  # hard link path -> the file it reaches
    materialize: dict[str, list[str]] = field(default_factory=dict)  # hidden file -> links that need it
    blocked: dict[str, bool] = field(default_factory=dict)  # directory -> upper layers hide what is below it


class MergePlanner:
    """Decides entry by entry, top layer first, what the merged image holds. No I/O."""

    def __init__(self, max_warnings: int = 50):
        self._upper: dict[str, int] = {}
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
        for path, value in layer.survivors.items():
            current = self._upper.get(path)
            if current is None:
                self._upper[path] = value
            elif current & _KIND_MASK == _K_DIR and value & _KIND_MASK == _K_DIR:
                self._upper[path] = current | (value & (_EXPLICIT | _COVERED))
        # A whiteout under a directory of an upper layer (or of this one): the directory stays, what lower
        # layers have in it goes (it becomes opaque).
        for path in layer.whiteouts:
            current = self._upper.get(path)
            if current is None:
                self._upper[path] = _K_WHITEOUT
            elif current & _KIND_MASK == _K_DIR:
                self._upper[path] = current | _OPAQUE
        for path in layer.opaque:
            current = self._upper.get(path, _K_DIR if path == "" else None)
            if current is not None and current & _KIND_MASK == _K_DIR:
                self._upper[path] = current | _OPAQUE
        self._layer = None
        return [Materialization(target, links[0], tuple(links[1:])) for target, links in layer.materialize.items()]

    def finish(self) -> list[CrossLink]:
        """After the bottom layer: the cross-layer hard links whose target is a regular file of the image."""
        kept = []
        for link in self._cross_links:
            value = self._upper.get(link.target)
            if value is not None and value & _REGULAR and self._survives(link.target):
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
        conflict = self._layer_conflict(layer, path, header.kind == DIR)
        if conflict:
            return self._drop(path, f"{layer.label}: {path}: {conflict}: dropped")
        if header.kind == HARDLINK:
            return self._hardlink(layer, path, header.linkname)
        return self._place(layer, path, header.kind)

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
            target, opaque = (f"{directory}/{name}" if directory else name), False
        conflict = self._layer_conflict(layer, directory, True) if directory else None
        if conflict:
            return self._drop(path, f"{layer.label}: {path}: {conflict}: dropped")
        # The marker's directory is part of this layer, so it exists in the merged tree (unless hidden).
        self._imply_dirs(layer, directory, with_self=True)
        if directory and self._reachable_dir(directory):
            self._imply_survivor_dirs(layer, directory)
            layer.survivors.setdefault(directory, _K_DIR)
        if opaque:
            layer.opaque.add(target)  # an opaque root ("") hides every lower layer; OCI allows it
        else:
            layer.whiteouts.add(target)
        return Decision(Action.WHITEOUT, target)

    def _reachable_dir(self, path: str) -> bool:
        """Would a directory at `path` given by the current layer be part of the merged tree?"""
        root = self._upper.get("")
        if root is not None and root & _OPAQUE:
            return False
        if self._upper_blocks_below(parent_of(path)):
            return False
        value = self._upper.get(path)
        return value is None or value & _KIND_MASK == _K_DIR

    def _layer_conflict(self, layer: _Layer, path: str, is_dir: bool) -> str | None:
        """Why `path` cannot be placed given earlier entries of its own layer, or None."""
        parent = parent_of(path)
        # A parent already in this layer as a directory vouches for every ancestor (see _imply_dirs).
        known = layer.seen.get(parent) if parent else _K_DIR
        for ancestor in ancestors(path) if known is None else ([parent] if parent else []):
            value = layer.seen.get(ancestor)
            if value is not None and value & _KIND_MASK == _K_NONDIR:
                return f"below {ancestor!r}, which is not a directory in this layer (write through a link)"
        value = layer.seen.get(path)
        if value is None:
            return None
        if value & _KIND_MASK == _K_DIR and is_dir:
            return None
        if value & _KIND_MASK == _K_DIR:
            return "a directory of this layer already has this path"
        return "duplicate entry in this layer"

    def _upper_blocks_below(self, directory: str) -> bool:
        """Do upper layers hide what the current layer puts below `directory` ("" = the root)?

        Cached per layer: the upper tree does not change while a layer is read, and siblings share parents.
        """
        layer = self._require_layer()
        cached = layer.blocked.get(directory)
        if cached is not None:
            return cached
        root = self._upper.get("")
        blocked = root is not None and bool(root & _OPAQUE)
        if directory and not blocked:
            blocked = self._upper_blocks_below(parent_of(directory))
            value = self._upper.get(directory)
            if not blocked and value is not None:
                blocked = value & _KIND_MASK != _K_DIR or bool(value & _OPAQUE)
        layer.blocked[directory] = blocked
        return blocked

    def _hidden_by_upper(self, path: str, is_dir: bool) -> bool:
        if self._upper_blocks_below(parent_of(path)):
            return True
        value = self._upper.get(path)
        if value is None:
            return False
        if value & _KIND_MASK != _K_DIR or not is_dir:
            return True
        return bool(value & _EXPLICIT)

    def _survives(self, path: str) -> bool:
        """Is `path`, known to the merged tree, reachable (no upper non-directory or opaque above it)?"""
        return all(self._upper.get(a, _K_DIR) & _KIND_MASK == _K_DIR for a in ancestors(path))

    @staticmethod
    def _imply_dirs(layer: _Layer, path: str, *, with_self: bool) -> None:
        # Walk up until a known path: whatever is known already has its ancestors recorded.
        directory = path if with_self else parent_of(path)
        while directory and directory not in layer.seen:
            layer.seen[directory] = _K_DIR
            directory = parent_of(directory)

    @staticmethod
    def _imply_survivor_dirs(layer: _Layer, path: str) -> None:
        """Record the ancestors of an emitted entry: directories of the merged tree, present in the stream."""
        directory = parent_of(path)
        while directory and not layer.survivors.get(directory, 0) & _COVERED:
            layer.survivors[directory] = layer.survivors.get(directory, _K_DIR) | _COVERED
            directory = parent_of(directory)

    @staticmethod
    def _hidden(layer: _Layer, path: str, is_dir: bool) -> Decision:
        # A shadowed non-directory still ends the merge of the upper directory at its path: what lower
        # layers hold below it stays hidden (overlayfs stops at a non-directory too).
        if not is_dir:
            layer.opaque.add(path)
        return Decision(Action.HIDDEN, path)

    def _place(self, layer: _Layer, path: str, kind: str) -> Decision:
        is_dir = kind == DIR
        value = (_K_DIR | _EXPLICIT) if is_dir else (_K_NONDIR | (_REGULAR if kind == FILE else 0))
        previous = layer.seen.get(path)
        if previous is not None and previous & _EXPLICIT:
            return Decision(Action.HIDDEN, path)  # a repeated directory entry: the first one counts
        self._imply_dirs(layer, path, with_self=False)
        layer.seen[path] = value
        hidden = self._hidden_by_upper(path, is_dir)
        if kind == FILE:
            layer.files[path] = not hidden
        if hidden:
            return self._hidden(layer, path, is_dir)
        self._imply_survivor_dirs(layer, path)
        layer.survivors[path] = value
        return Decision(Action.EMIT, path)

    def _hardlink(self, layer: _Layer, path: str, linkname: str) -> Decision:
        try:
            target, _ = normalize_name(linkname)
        except HostileEntry as exc:
            return self._drop(path, f"{layer.label}: {path}: hard link target {exc}: dropped")
        if not target:
            return self._drop(path, f"{layer.label}: {path}: hard link to the root directory: dropped")
        target = layer.aliases.get(target, target)
        if target not in layer.seen:
            return self._cross_layer_link(layer, path, target)
        if target not in layer.files:
            return self._drop(path, f"{layer.label}: {path}: hard link to {target!r}, not a regular file: dropped")
        self._imply_dirs(layer, path, with_self=False)
        layer.seen[path] = _K_NONDIR | _REGULAR
        layer.aliases[path] = target
        if self._hidden_by_upper(path, False):
            return self._hidden(layer, path, False)
        self._imply_survivor_dirs(layer, path)
        layer.survivors[path] = _K_NONDIR | _REGULAR
        if layer.files[target]:
            return Decision(Action.EMIT, path, link=target)
        # The target is shadowed above: this link must carry the content the layer gave it.
        layer.materialize.setdefault(target, []).append(path)
        return Decision(Action.DEFERRED, path, link=target)

    def _cross_layer_link(self, layer: _Layer, path: str, target: str) -> Decision:
        self._imply_dirs(layer, path, with_self=False)
        layer.seen[path] = _K_NONDIR | _REGULAR
        if self._hidden_by_upper(path, False):
            return self._hidden(layer, path, False)
        self._imply_survivor_dirs(layer, path)
        layer.survivors[path] = _K_NONDIR | _REGULAR
        self._cross_links.append(CrossLink(path, target))
        return Decision(Action.DEFERRED, path, link=target)

    # ------------------------------------------------------------------------------ queries

    def unwritten_directories(self) -> list[str]:
        """After all layers: directories of the merged tree that no entry of the stream creates (a layer
        implied them only through a whiteout or opaque marker), parents first."""
        return sorted(path for path, value in self._upper.items()
                      if path and value & _KIND_MASK == _K_DIR and not value & (_EXPLICIT | _COVERED)
                      and self._survives(path))

    def can_add_directory(self, path: str) -> bool:
        """After all layers: may a directory be added at `path` (absent, and no non-directory above it)?"""
        for ancestor in ancestors(path):
            value = self._upper.get(ancestor)
            if value is not None and value & _KIND_MASK != _K_DIR:
                return False
        return path not in self._upper or self._upper[path] & _KIND_MASK == _K_WHITEOUT

    def has_directory(self, path: str) -> bool:
        value = self._upper.get(path)
        return value is not None and value & _KIND_MASK == _K_DIR and self._survives(path)
