"""The plain forms of a command line read without argparse, for the verbs that start often (`start`, and `spank`,
which the SPANK plugin runs for every Slurm step): argparse costs them more than their work. Anything these
readers do not know is left to argparse (they return None), which then reads it or says what is wrong."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def read_options(words: Sequence[str], at: int, flags: Mapping[str, str], values: Mapping[str, str],
                 repeatable: frozenset[str], found: dict) -> int | None:
    """Read the options from `words[at]` on into `found` (attribute -> value), up to the first word that is no
    option; return that word's index. The forms read: a flag's spelling (True), `-v`/`--verbose` (counted),
    `--long=VALUE`, `-s VALUE`, `--long VALUE` (appended to a list for a `repeatable` attribute). None for
    anything else: an unknown, abbreviated or clustered option, a flag with a value, an empty `--long=`, a
    value that looks like an option, `--`."""
    while at < len(words) and words[at][:1] == "-":
        word = words[at]
        spelling, equals, attached = word.partition("=")
        key = spelling if equals and spelling.startswith("--") else word
        if word in ("-v", "--verbose"):
            found["verbose"] += 1
        elif key in flags and not equals:
            found[flags[key]] = True
        elif key in values and not (equals and not attached):
            if not equals:
                at += 1
                if at == len(words) or words[at][:1] == "-":
                    return None
                attached = words[at]
            attribute = values[key]
            if attribute in repeatable:
                found[attribute].append(attached)
            else:
                found[attribute] = attached
        else:
            return None
        at += 1
    return at
