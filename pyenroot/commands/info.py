"""`pyenroot info`: version and every resolved setting."""

from pyenroot import __version__


def add_arguments(parser) -> None:
    pass


def run(args, settings) -> int:
    print(f"pyenroot {__version__}")
    for name in sorted(settings.values):
        print(f"{name}={settings.values[name]}")
    return 0
