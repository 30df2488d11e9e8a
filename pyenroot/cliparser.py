"""The command line's argparse frame: the parser of every verb, usage errors as `UsageError`, `--help` layout.

Imported only when a command line needs it (`cli.main` parses a plain `start` without argparse, see
`commands/start.py`), by `cli.build_parser`, a bundle's runtime and the manual page and completion generators.
"""

from __future__ import annotations

import argparse

from pyenroot import __version__, cli
from pyenroot.errors import UsageError


class _Formatter(argparse.HelpFormatter):
    """argparse writes a REMAINDER argument as `...`; we write its metavar, in brackets when it is optional:
    `NAME|IMAGE [COMMAND [ARG...]]`, `PID COMMAND [ARG...]`."""

    def _format_args(self, action, default_metavar):
        if action.nargs == argparse.REMAINDER and action.metavar:
            return f"[{action.metavar}]" if not action.required else str(action.metavar)
        return super()._format_args(action, default_metavar)


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint=f"see '{self.prog} --help'")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `only`, just that verb's arguments are loaded (fast path)."""
    parser = Parser(prog="pyenroot", description="Unprivileged containers for HPC, enroot-compatible.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="print what happens and how long it takes")
    parser.add_argument("--version", action="version", version=f"pyenroot {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=Parser)
    for verb, help_text in cli.VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        # Also after the verb (`pyenroot import -v URI`); SUPPRESS keeps a `pyenroot -v import` count.
        verb_parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                                 help="print what happens and how long it takes")
        if only is None or verb == only:
            cli.command_module(verb).add_arguments(verb_parser)
    return parser
