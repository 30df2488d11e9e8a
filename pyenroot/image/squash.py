"""Build squashfs images from one tar stream with tar2sqfs (squashfs-tools-ng), honouring ENROOT_SQUASH_OPTIONS.

ENROOT_SQUASH_OPTIONS is written in mksquashfs syntax (enroot passes it to mksquashfs); `translate_options`
maps it to tar2sqfs. Options tar2sqfs cannot express (`-noD` and the like) make the import fall back to
unpacking the merged tree and running mksquashfs over it; options that only change mksquashfs's chatter are
ignored; anything else is an error that names the option.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from pathlib import Path

from pyenroot import squashfs, tools
from pyenroot.config import find_program
from pyenroot.errors import ConfigError, ImageError
from pyenroot.record import factory, record

COMPRESSORS = ("gzip", "lzma", "lzo", "xz", "lz4", "zstd")
DEFAULT_OPTIONS = "-comp lz4"

# mksquashfs options that change nothing tar2sqfs would do differently (or that we always do).
_IGNORED = frozenset({
    "-no-progress", "-progress", "-quiet", "-all-root", "-root-owned", "-noappend", "-no-recovery",
    "-no-exports", "-no-sparse", "-sparse", "-xattrs", "-no-strip", "-tailends", "-percentage", "-info",
})
_IGNORED_WITH_VALUE = frozenset({"-mkfs-time", "-all-time", "-root-time", "-root-mode", "-root-uid", "-root-gid",
                                 "-force-uid", "-force-gid"})
# Options only mksquashfs has: data layout choices tar2sqfs does not offer.
_NEEDS_MKSQUASHFS = frozenset({
    "-noI", "-noD", "-noF", "-noX", "-noId", "-noInodeCompression", "-noDataCompression",
    "-noFragmentCompression", "-noXattrCompression", "-noIdTableCompression", "-no-fragments",
    "-always-use-fragments", "-no-duplicates", "-Xbcj", "-Xdict-size",
    # tar2sqfs 1.2 makes no lzo compressor for any algorithm but its default (lzo1x_999)
    "-Xalgorithm",
})
_NEEDS_MKSQUASHFS_VALUE = frozenset({"-Xbcj", "-Xdict-size", "-Xalgorithm"})
# tar2sqfs -X keys for -X options taking a value (-Xlc, -Xlp and -Xpb: xz and lzma's, which tar2sqfs has and
# mksquashfs 4.5 has not).
_EXTRA_WITH_VALUE = {"-Xcompression-level": "level", "-Xwindow-size": "window", "-Xlc": "lc", "-Xlp": "lp",
                     "-Xpb": "pb"}
_EXTRA_FLAGS = {"-Xhc": "hc", "-Xextreme": "extreme"}
# gzip's -Xstrategy LIST: tar2sqfs takes each strategy as a flag of its own, some under shorter names.
_GZIP_STRATEGIES = {"default": "default", "filtered": "filtered", "huffman_only": "huffman",
                    "run_length_encoded": "rle", "fixed": "fixed"}
# What the error's hint lists: every option translated for tar2sqfs, then the two kinds handled wholesale.
SUPPORTED_HINT = ("supported: -comp, -b, " + ", ".join([*_EXTRA_WITH_VALUE, *_EXTRA_FLAGS, "-Xstrategy"])
                  + ", -no-xattrs, -exports, -processors, options only mksquashfs has (-noI, -noD, -noF, -noX, "
                  "-no-fragments, -Xbcj, -Xdict-size, -Xalgorithm, ...) and options that change nothing here "
                  "(-quiet, -all-root, ...)")


def _gzip_strategies(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in _GZIP_STRATEGIES]
    if unknown or not names:
        raise ConfigError(f"ENROOT_SQUASH_OPTIONS: unknown gzip strategy {','.join(unknown) or text!r}",
                          hint=f"use one or more of: {', '.join(_GZIP_STRATEGIES)}")
    return [_GZIP_STRATEGIES[name] for name in names]


@record
class SquashPlan:
    """How to build the image: tar2sqfs arguments, or mksquashfs (with its own arguments) when needed."""

    compressor: str = "lz4"
    block_size: int | None = None
    extra: list[str] = factory(list)  # tar2sqfs -X key[=value]
    jobs: int | None = None
    xattrs: bool = True
    exportable: bool = False
    use_mksquashfs: bool = False
    mksquashfs_args: list[str] = factory(list)
    notes: list[str] = factory(list)

    def builds_with_mksquashfs(self) -> bool:
        """Whether the image is built by mksquashfs: the options ask for it, or tar2sqfs is not installed. The
        build and the built-image cache's key both ask this, so that they cannot disagree."""
        return self.use_mksquashfs or find_program("tar2sqfs") is None

    def tar2sqfs_argv(self, output: Path, jobs: int) -> list[str]:
        argv = ["tar2sqfs", "--quiet", "--no-skip", "--force", "-c", self.compressor, "-j", str(self.jobs or jobs)]
        if self.extra:
            argv += ["-X", ",".join(self.extra)]
        if self.block_size:
            argv += ["-b", str(self.block_size)]
        if not self.xattrs:
            argv.append("--no-xattr")
        if self.exportable:
            argv.append("--exportable")
        return [*argv, str(output)]

    def mksquashfs_argv(self, source: Path, output: Path, jobs: int) -> list[str]:
        argv = ["mksquashfs", str(source), str(output), "-noappend", "-all-root", "-no-progress", "-quiet",
                "-processors", str(self.jobs or jobs)]
        return argv + self.mksquashfs_args


def parse_size(text: str) -> int:
    """mksquashfs sizes: `131072`, `128K`, `1M`."""
    match = re.fullmatch(r"(\d+)([kKmM]?)", text)
    if not match:
        raise ConfigError(f"ENROOT_SQUASH_OPTIONS: invalid size {text!r}")
    return int(match[1]) * {"": 1, "k": 1024, "m": 1 << 20}[match[2].lower()]


def _split_words(text: str) -> list[str]:
    """Shell words. Printable ASCII without quotes or backslashes (the default, and most settings) splits on
    blanks as shlex would, which a Slurm step that finds its image built then need not import."""
    if all(c in " \t\r\n" or (" " < c <= "~" and c not in "'\"\\") for c in text):
        return text.split()
    import shlex

    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"ENROOT_SQUASH_OPTIONS cannot be parsed: {exc}") from None


def translate_options(text: str | None) -> SquashPlan:
    """Turn ENROOT_SQUASH_OPTIONS (mksquashfs syntax) into a SquashPlan; unknown options raise ConfigError."""
    words = _split_words(text if text is not None else DEFAULT_OPTIONS)
    result = SquashPlan(compressor="gzip")  # mksquashfs's default when no -comp is given
    i = 0

    def value() -> str:
        if i + 1 >= len(words):
            raise ConfigError(f"ENROOT_SQUASH_OPTIONS: {words[i]} needs a value")
        return words[i + 1]

    while i < len(words):
        word = words[i]
        if word == "-comp":
            name = value()
            if name not in COMPRESSORS:
                raise ConfigError(f"ENROOT_SQUASH_OPTIONS: unknown compressor {name!r}",
                                  hint=f"use one of: {', '.join(COMPRESSORS)}")
            result.compressor = name
            result.mksquashfs_args += [word, name]
            i += 2
        elif word == "-b":
            result.block_size = parse_size(value())
            result.mksquashfs_args += [word, value()]
            i += 2
        elif word in ("-processors", "-p"):
            result.jobs = int(value()) if value().isdigit() else None
            i += 2
        elif word in _EXTRA_WITH_VALUE:
            result.extra.append(f"{_EXTRA_WITH_VALUE[word]}={value()}")
            result.mksquashfs_args += [word, value()]
            i += 2
        elif word == "-Xstrategy":
            result.extra += _gzip_strategies(value())
            result.mksquashfs_args += [word, value()]
            i += 2
        elif word in _EXTRA_FLAGS:
            result.extra.append(_EXTRA_FLAGS[word])
            result.mksquashfs_args.append(word)
            i += 1
        elif word in ("-no-xattrs", "-no-xattr"):
            result.xattrs = False
            result.mksquashfs_args.append("-no-xattrs")
            i += 1
        elif word == "-exports":
            result.exportable = True
            result.mksquashfs_args.append(word)
            i += 1
        elif word in _NEEDS_MKSQUASHFS:
            result.use_mksquashfs = True
            result.notes.append(word)
            taken = [word, value()] if word in _NEEDS_MKSQUASHFS_VALUE else [word]
            result.mksquashfs_args += taken
            i += len(taken)
        elif word in _IGNORED:
            i += 1
        elif word in _IGNORED_WITH_VALUE:
            i += 2
        else:
            raise ConfigError(f"ENROOT_SQUASH_OPTIONS: unsupported option {word!r}", hint=SUPPORTED_HINT)
    return result


# ------------------------------------------------------------------------------------- id table fix

_UNCOMPRESSED_BIT = 0x8000


def fix_single_id_table(path: Path) -> bool:
    """Store a one-entry ID table uncompressed, as mksquashfs does; return whether the file changed.

    tar2sqfs 1.2 keeps the compressed form of a metadata block even when it is larger than the data, and
    for the 4-byte ID table of an image where every file is root's (ours) it always is. unsquashfs 4.5
    rejects such a block ("failed to read id table block"), so `create` could not unpack the image; the
    kernel and squashfuse read either form. The uncompressed block (2 + 4 bytes) fits where the compressed
    one was, and its content is known: the one ID is 0, because the merged stream makes every file root's.
    """
    with open(path, "r+b") as f:
        superblock = squashfs.parse_superblock(f.read(squashfs.SUPERBLOCK.size))
        if superblock is None or superblock.id_count != 1:
            return False
        f.seek(superblock.id_table_start)
        (block_start,) = struct.unpack("<Q", f.read(8))
        f.seek(block_start)
        (header,) = struct.unpack("<H", f.read(2))
        if header & _UNCOMPRESSED_BIT or header < 4:
            return False
        f.seek(block_start)
        f.write(struct.pack("<HI", _UNCOMPRESSED_BIT | 4, 0))
    return True


# ------------------------------------------------------------------------------------------ running


class Tar2Sqfs:
    """A running tar2sqfs that reads the merged tar on its stdin and writes `output`."""

    def __init__(self, squash: SquashPlan, output: Path, jobs: int, *, pass_fds: tuple[int, ...] = ()):
        self.output = output
        self.process = tools.spawn(squash.tar2sqfs_argv(output, jobs), stdin=tools.PIPE, keep_fds=pass_fds,
                                   bufsize=1 << 20, hint="install squashfs-tools-ng", many_files=True)
        assert self.process.stdin is not None
        # tar2sqfs reads 256 KiB at a time: through a 64 KiB pipe it wakes four times as often, and its threads
        # with it (measured: ~1 CPU-s more for 2 GB of tar).
        tools.widen_pipe(self.process.stdin.fileno())
        self.stdin = self.process.stdin

    def finish(self) -> None:
        """Wait for tar2sqfs; a failure becomes an ImageError with its last message."""
        if not self.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.stdin.close()
        rc = self.process.wait()
        err = self.process.stderr.read().decode(errors="replace").strip() if self.process.stderr else ""
        if rc != 0:
            raise squash_error(err, self.output)
        fix_single_id_table(self.output)

    def abort(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def squash_error(stderr: str, output: Path) -> ImageError:
    last = stderr.splitlines()[-1] if stderr else "unknown error"
    if tools.out_of_space(stderr):
        return ImageError(f"no space left on device while writing {output}",
                          hint="free some space or write the image elsewhere with -o")
    return ImageError(f"building the squashfs image failed: {last}")


def run_mksquashfs(squash: SquashPlan, source: Path, output: Path, jobs: int, *,
                   pass_fds: tuple[int, ...] = ()) -> None:
    result = tools.run(squash.mksquashfs_argv(source, output, jobs), stdout=tools.DEVNULL, keep_fds=pass_fds,
                       hint="install squashfs-tools", many_files=True)
    if result.returncode != 0:
        raise squash_error(result.stderr.strip(), output)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
