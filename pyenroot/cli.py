"""The `pyenroot` command line: argument parsing, error rendering and exit codes.

Each verb lives in `pyenroot.commands.<verb>` with `add_arguments(parser)` and `run(args, settings)`;
command modules import their heavy dependencies inside `run` so that `--help` and `start` stay quick. The
argparse parser lives in `cliparser.py`; a plain `start` command line, and the SPANK plugin's `spank`, are read
without it (`pyenroot/quickargs.py`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence

from pyenroot.errors import PyenrootError, UsageError

# verb -> one-line help; the module is pyenroot.commands.<verb> (import is a keyword: import_).
VERBS: dict[str, str] = {
    "version": "print the version",
    "import": "import an image from a registry or archive into a squashfs file",
    "load": "import an image straight into a container root filesystem",
    "digest": "print the manifest digest of a registry image for one platform",
    "create": "create a container root filesystem from a squashfs image",
    "start": "start a container and run a command in it",
    "exec": "run a command in a running container",
    "export": "export a container root filesystem to a squashfs image",
    "list": "list containers",
    "remove": "remove containers",
    "batch": "start a container from a batch configuration file",
    "bundle": "create a self-extracting bundle from a squashfs image",
    "cache": "list the image cache or prune it (least recently used first)",
    "store": "add, list or remove images of the site-wide image store (PYENROOT_IMAGE_STORE)",
    "info": "print the version and the resolved settings",
    "doctor": "check what this machine supports (namespaces, FUSE, overlay, GPUs)",
    "spank": "internal: the Slurm SPANK plugin's helper (start, cleanup, epilog)",
}


# Verbs that write images, containers or cache entries: SIGTERM (kill, timeout, Slurm) unwinds them like an
# error, so that their clean-up (`finally`, temp files, work directories, tool processes) runs before exiting.
_UNWIND_ON_SIGTERM = frozenset({"bundle", "create", "export", "import", "load", "remove", "store"})


class _Terminated(BaseException):
    """SIGTERM arrived; a BaseException so that no `except Exception` in library code swallows it."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _sigterm_unwinds(verb: str) -> Iterator[None]:
    if verb not in _UNWIND_ON_SIGTERM:
        yield
        return
    with sigterm_unwinds():
        yield


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises (run_guarded turns it into exit status 143) so that clean-up runs."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def command_module(verb: str):
    name = "import_" if verb == "import" else verb
    return importlib.import_module(f"pyenroot.commands.{name}")


def build_parser(only: str | None = None):
    """The full argparse parser (`cliparser.build_parser`); with `only`, just that verb's arguments."""
    from pyenroot import cliparser

    return cliparser.build_parser(only)


def _find_verb(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg in VERBS:
            return arg
        if not arg.startswith("-"):
            return None
    return None


# Verbs whose plain command lines are read without argparse (`quick_arguments` in their module): a start, and
# the SPANK plugin's `spank` for every Slurm step.
_QUICK_VERBS = ("start", "spank")


def _quick_arguments(argv: Sequence[str]):
    if not argv or argv[0] not in _QUICK_VERBS:
        return None
    return importlib.import_module(f"pyenroot.commands.{argv[0]}").quick_arguments(list(argv[1:]))


def _one_line(text: str) -> str:
    """Tool output and library messages may span lines; an error is always one line (and a hint another)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _render(error: PyenrootError) -> None:
    print(f"pyenroot: error: {_one_line(error.message)} ({error.reference})", file=sys.stderr)
    if error.hint:
        print(f"hint: {_one_line(error.hint)}", file=sys.stderr)


def _unexpected(exc: Exception) -> PyenrootError:
    """The last line of defence: an error no code path turned into a PyenrootError is still one line."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return PyenrootError(f"{exc.strerror}{where}", reference="os-error",
                             hint="rerun with --debug to see where it happened")
    return PyenrootError(f"unexpected {type(exc).__name__}: {exc}", reference="bug",
                         hint="this is a bug in pyenroot; rerun with --debug to see the traceback and report it")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = ["--debug" in argv[:1] or os.environ.get("PYENROOT_DEBUG") == "1"]

    def run() -> int:
        if argv and not argv[0].startswith("-") and argv[0] not in VERBS:
            raise UsageError(f"unknown command: {argv[0]}", hint="see 'pyenroot --help' for the commands")
        # `start NAME [COMMAND]` with plain options, and the plugin's `spank ...`, are parsed without argparse (a
        # start imports as little as it can); anything else, --help and every mistake included, goes through the
        # full parser.
        args = _quick_arguments(argv) or build_parser(only=_find_verb(argv)).parse_args(argv)
        debug[0] = debug[0] or args.debug
        if args.verb is None:
            build_parser(only="").print_help()
            return 0
        from pyenroot.config import load_settings

        with _sigterm_unwinds(args.verb):
            return int(command_module(args.verb).run(args, load_settings()) or 0)

    return run_guarded(run, lambda: debug[0])


def _bar_line_open() -> bool:
    """Whether an interrupt cut a progress bar short with its line open (only if bars were shown at all)."""
    progress = sys.modules.get("pyenroot.image.progress")
    return bool(progress and progress.terminal_line_open())


def run_guarded(action: Callable[[], int], debug: Callable[[], bool]) -> int:
    """Run `action` and turn what it raises into one error line (and a hint) and an exit code, as every
    pyenroot entry point does (the CLI, a bundle's runtime); `debug()` true: let the traceback through."""
    try:
        return action()
    except PyenrootError as error:
        if debug():
            raise
        _render(error)
        return error.exit_code
    except KeyboardInterrupt:  # Ctrl-C: a live progress bar has normally ended its line on the way out
        with contextlib.suppress(OSError, ValueError):
            print(f"{chr(10) if _bar_line_open() else ''}pyenroot: interrupted", file=sys.stderr, flush=True)
        return 130
    except _Terminated:
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        return 141
    except Exception as exc:  # never a traceback for the user; --debug shows it
        if debug():
            raise
        error = _unexpected(exc)
        _render(error)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
