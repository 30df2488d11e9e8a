"""The CLI frame: help everywhere, one-line errors, exit codes."""

import pytest

from pyenroot import __version__
from pyenroot.cli import VERBS, main


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert f"pyenroot {verb}" in capsys.readouterr().out


def test_unknown_verb_is_one_line_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "pyenroot: error: unknown command: frobnicate (usage)"
    assert err[1].startswith("hint:")


def test_missing_argument_is_usage_error(capsys):
    assert main(["create"]) == 2
    assert "required" in capsys.readouterr().err


def test_no_traceback_without_debug(monkeypatch, capsys):
    monkeypatch.delenv("PYENROOT_DEBUG", raising=False)
    assert main(["create", "/nonexistent/x.sqsh"]) != 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "expected"), [
    (["-v", "import", "docker://x"], 1),
    (["import", "-v", "docker://x"], 1),
    (["import", "-vv", "docker://x"], 2),
    (["import", "docker://x"], 0),
])
def test_verbose_before_or_after_the_verb(argv, expected):
    from pyenroot.cli import build_parser

    assert build_parser(only="import").parse_args(argv).verbose == expected


def test_ctrl_c_says_interrupted_and_exits_130(capsys):
    from pyenroot.cli import run_guarded

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert run_guarded(interrupted, lambda: False) == 130
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "pyenroot: interrupted\n")
