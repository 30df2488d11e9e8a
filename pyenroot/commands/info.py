"""`pyenroot info`: version and every setting, resolved (unset ones too)."""

from pyenroot import __version__


def add_arguments(parser) -> None:
    pass


def lines(values: dict[str, str]) -> list[str]:
    """`NAME=value` for every setting that is set; `# NAME unset` for every known one that is not (a comment,
    so that a reader of NAME=value lines skips it, and an empty value stays distinct from none)."""
    from pyenroot.config import SETTINGS

    names = sorted({s.name for s in SETTINGS} | set(values))
    return [f"{name}={values[name]}" if name in values else f"# {name} unset" for name in names]


def run(args, settings) -> int:
    print(f"pyenroot {__version__}")
    for line in lines(settings.values):
        print(line)
    return 0
