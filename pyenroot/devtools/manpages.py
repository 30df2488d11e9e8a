"""Manual pages generated from the argparse definitions: pyenroot(1) and one pyenroot-VERB(1) per verb.

Build-time only (`make man`, `make install`, the Debian package): the roff comes from argparse-manpage
(Debian's python3-argparse-manpage), so the pages say what `--help` says. Usage: python3 -m
pyenroot.devtools.manpages OUTDIR
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from pyenroot import __version__, cli

# Verbs the plugin runs, not people: no page of their own.
INTERNAL_VERBS = frozenset({"spank"})
SECTION = "1"
MANUAL = "pyenroot manual"


@dataclass(frozen=True)
class Page:
    name: str  # pyenroot or pyenroot-VERB
    summary: str
    parser: argparse.ArgumentParser


def verb_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subparsers of `parser` by verb, in the order --help lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def pages() -> list[Page]:
    parser = cli.build_parser()
    result = [Page("pyenroot", "unprivileged containers for HPC, enroot compatible", parser)]
    for verb, verb_parser in verb_parsers(parser).items():
        if verb not in INTERNAL_VERBS:
            result.append(Page(f"pyenroot-{verb}", cli.VERBS[verb], verb_parser))
    return result


def _roff_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("-", "\\-")


def _see_also(page: Page, all_pages: list[Page]) -> str:
    others = [other.name for other in all_pages if other.name != page.name]
    if page.name != "pyenroot":
        others = ["pyenroot"]
    return ".SH SEE ALSO\n" + ",\n".join(f".BR {_roff_text(name)} ({SECTION})" for name in others) + "\n"


def render(page: Page, all_pages: list[Page]) -> str:
    """One page's roff: argparse-manpage's body under our own title and NAME lines."""
    from build_manpages.manpage import Manpage

    body = str(Manpage(page.parser)).splitlines()
    # argparse-manpage titles a subparser's page with its prog ("pyenroot import", two words) and leaves
    # NAME without a summary; man and apropos want one word and "NAME \- summary".
    start = next(i for i, line in enumerate(body) if line.startswith(".SH SYNOPSIS"))
    title = (f'.TH {page.name.upper()} "{SECTION}" "" "pyenroot {__version__}" "{MANUAL}"\n'
             f".SH NAME\n{_roff_text(page.name)} \\- {_roff_text(page.summary)}\n")
    return title + "\n".join(body[start:]) + "\n" + _see_also(page, all_pages)


def write_pages(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    all_pages = pages()
    written = []
    for page in all_pages:
        path = directory / f"{page.name}.{SECTION}"
        path.write_text(render(page, all_pages))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python3 -m pyenroot.devtools.manpages OUTDIR", file=sys.stderr)
        return 2
    for path in write_pages(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
