"""`pyenroot version`."""

from pyenroot import __version__


def add_arguments(parser) -> None:
    pass


def run(args, settings) -> int:
    print(__version__)
    return 0
