"""`pyenroot batch CONFIG [COMMAND [ARG...]]`; usable as a `#!` interpreter.

A batch file is a start configuration script whose `#ENROOT_*` comment lines are settings; the container
to start comes from `#ENROOT_ROOTFS=NAME|IMAGE`. The rest is what `pyenroot start -c CONFIG ROOTFS COMMAND...`
does, asked with the same StartOptions.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="batch configuration file with #ENROOT_ directives")
    command = parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]",
                                  help="command to run (default: the image's entrypoint, or a shell)")
    command.required = False  # it may be empty; argparse lists every positional as required when one is missing


def read_directives(path: Path, lookup: Mapping[str, str]) -> dict[str, str]:
    """The `#ENROOT_*` directives of a batch file, parsed as `start -c` parses them."""
    from pyenroot.errors import ConfigError
    from pyenroot.runtime import configscript

    try:
        text = path.read_text(errors="surrogateescape")
    except IsADirectoryError:
        raise ConfigError(f"cannot read batch file {path}: it is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read batch file {path}: {exc.strerror}") from None
    return configscript.directives(text, lookup)


def start_options(args, rootfs: str):
    """What `start -c CONFIG ROOTFS COMMAND...` would be asked, with start's own defaults."""
    from pyenroot.commands.start import command_of
    from pyenroot.runtime.options import StartOptions

    return StartOptions(target=rootfs, command=command_of(args.command), conf=Path(args.config))


def run(args, settings) -> int:
    from pyenroot.commands import start
    from pyenroot.errors import ConfigError
    from pyenroot.runtime import configscript

    lookup = {**os.environ, **settings.values}
    directives = read_directives(Path(args.config), lookup)
    configscript.check_syntax(Path(args.config), "batch file")  # a syntax error first, not its consequences
    rootfs = directives.pop("ENROOT_ROOTFS", "")
    if not rootfs:
        raise ConfigError(f"missing directive ENROOT_ROOTFS in {args.config}",
                          hint="add a line '#ENROOT_ROOTFS=NAME' (a container name or a .sqsh image)")
    # start reads the directives again from -c; applying them here too keeps batch right whatever start does.
    return start.start_container(start_options(args, rootfs), settings.overridden(**directives),
                                 verbose=getattr(args, "verbose", 0) > 0)
