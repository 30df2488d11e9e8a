"""The bash completion script, generated from the argparse definitions at build time.

Verbs and each verb's options come from the parser (so completion and --help never disagree); container
names come from `pyenroot list` at completion time, images from the `.sqsh` files in the directory being
typed. Usage: python3 -m pyenroot.devtools.completion OUTFILE
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from pyenroot import cli
from pyenroot.devtools.manpages import INTERNAL_VERBS, verb_parsers

# What a verb's first positional argument names; verbs not listed complete file names there.
CONTAINER, IMAGE_OR_CONTAINER, IMAGE, NOTHING = "container", "image-or-container", "image", "nothing"
POSITIONAL_KIND = {
    "start": IMAGE_OR_CONTAINER,
    "export": CONTAINER,
    "remove": CONTAINER,
    "create": IMAGE,
    "bundle": IMAGE,
    "exec": NOTHING,
    "import": NOTHING,
    "load": NOTHING,
    "digest": NOTHING,
}
# Verbs whose positional arguments are all of one kind (the others take one, then a command or nothing).
REPEATED_POSITIONAL = frozenset({"remove"})


@dataclass(frozen=True)
class VerbOptions:
    verb: str
    flags: tuple[str, ...]  # options without a value
    valued: tuple[str, ...]  # options that take the next word as their value
    choices: dict[str, tuple[str, ...]]  # option -> its allowed values


def verb_options(verb: str, parser: argparse.ArgumentParser) -> VerbOptions:
    flags: list[str] = []
    valued: list[str] = []
    choices: dict[str, tuple[str, ...]] = {}
    for action in parser._actions:
        if not action.option_strings:
            continue
        (flags if action.nargs == 0 else valued).extend(action.option_strings)
        if action.choices and action.nargs != 0:
            for option in action.option_strings:
                choices[option] = tuple(str(choice) for choice in action.choices)
    return VerbOptions(verb, tuple(flags), tuple(valued), choices)


def all_verb_options() -> list[VerbOptions]:
    return [verb_options(verb, parser) for verb, parser in verb_parsers(cli.build_parser()).items()
            if verb not in INTERNAL_VERBS]


def _case(function: str, arms: list[tuple[str, str]]) -> str:
    lines = [f"{function}() {{", '    case "$1" in']
    lines += [f"        {pattern}) echo {_quote(words)} ;;" for pattern, words in arms if words]
    lines += ["    esac", "}"]
    return "\n".join(lines)


def _quote(words: str) -> str:
    return "'" + words.replace("'", "'\\''") + "'"


def render(verbs: list[VerbOptions]) -> str:
    global_options = verb_options("", cli.build_parser())
    choice_arms = [(f"'{v.verb} {option}'", " ".join(values)) for v in verbs for option, values in v.choices.items()]
    tables = "\n\n".join([
        _case("_pyenroot_flags", [(v.verb, " ".join(v.flags)) for v in verbs]),
        _case("_pyenroot_valued", [(v.verb, " ".join(v.valued)) for v in verbs]),
        _case("_pyenroot_choices", choice_arms) if choice_arms else "_pyenroot_choices() { :; }",
        _case("_pyenroot_positional", [(verb, kind) for verb, kind in POSITIONAL_KIND.items()]),
    ])
    return _TEMPLATE.format(
        verbs=_quote(" ".join(v.verb for v in verbs)),
        global_options=_quote(" ".join(global_options.flags + global_options.valued)),
        repeated="|".join(sorted(REPEATED_POSITIONAL)),
        tables=tables,
    )


_TEMPLATE = """\
# bash completion for pyenroot: verbs, options, container names and .sqsh images.
# Generated from pyenroot's argparse definitions by pyenroot.devtools.completion; do not edit.

_pyenroot_verbs={verbs}
_pyenroot_global_options={global_options}

{tables}

# Container names, as `pyenroot list` prints them (one per line, nothing on error).
_pyenroot_containers() {{
    command pyenroot list 2>/dev/null
}}

# .sqsh files and directories (to descend into) that start with $1.
_pyenroot_images() {{
    compgen -f -X '!*.sqsh' -- "$1"
    compgen -d -- "$1"
}}

_pyenroot() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local verb="" i word positionals=0 valued
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if [[ -z $verb ]]; then
            [[ $word == -* ]] || verb=$word
            continue
        fi
        if [[ $word == -* ]]; then
            [[ " $(_pyenroot_valued "$verb") " == *" $word "* ]] && ((i++))
        else
            ((positionals++))
        fi
    done
    if [[ -z $verb ]]; then
        if [[ $cur == -* ]]; then
            mapfile -t COMPREPLY < <(compgen -W "$_pyenroot_global_options" -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -W "$_pyenroot_verbs" -- "$cur")
        fi
        return 0
    fi
    valued=$(_pyenroot_valued "$verb")
    if [[ $COMP_CWORD -gt 1 && $prev == -* && " $valued " == *" $prev "* ]]; then
        local choices
        choices=$(_pyenroot_choices "$verb $prev")
        if [[ -n $choices ]]; then
            mapfile -t COMPREPLY < <(compgen -W "$choices" -- "$cur")
        else
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        fi
        return 0
    fi
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_pyenroot_flags "$verb") $valued" -- "$cur")
        return 0
    fi
    # After the first positional argument comes a command (start, exec, batch) or nothing.
    case $verb in
        {repeated}) ;;
        *) [[ $positionals -gt 0 ]] && return 0 ;;
    esac
    case $(_pyenroot_positional "$verb") in
        container)
            mapfile -t COMPREPLY < <(compgen -W "$(_pyenroot_containers)" -- "$cur") ;;
        image-or-container)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -W "$(_pyenroot_containers)" -- "$cur"; _pyenroot_images "$cur") ;;
        image)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(_pyenroot_images "$cur") ;;
        nothing) ;;
        *)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
    esac
    return 0
}}

complete -F _pyenroot pyenroot
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python3 -m pyenroot.devtools.completion OUTFILE", file=sys.stderr)
        return 2
    out = Path(args[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(all_verb_options()))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
