"""The environment-file dialect and the precedence of the environment sources."""

import pytest

from pyenroot.errors import UsageError
from pyenroot.runtime import environ


def test_dialect():
    text = (
        "  # comment\n"
        "\n"
        "PATH=/usr/bin:/bin\n"
        "  INDENTED=yes\n"
        'QUOTED="a b"\n'
        "SINGLE='c d'\n"
        "HALF=\"e\n"
        "ENROOT_SECRET=no\n"
        "export NOT=valid\n"
        "1BAD=x\n"
        "EMPTY=\n"
        "EQUALS=a=b\n"
    )
    assert environ.parse(text) == [
        ("PATH", "/usr/bin:/bin"), ("INDENTED", "yes"), ("QUOTED", "a b"), ("SINGLE", "c d"),
        ("HALF", '"e'), ("EMPTY", ""), ("EQUALS", "a=b"),
    ]


def test_later_layers_win():
    merged = environ.merge([[("A", "image"), ("B", "image")], [("A", "system")], [("A", "user"), ("C", "user")]])
    assert merged == {"A": "user", "B": "image", "C": "user"}


def test_cli_entries():
    entries = [environ.cli_entry(e) for e in ["A=1", "B", "C=", "D"]]
    assert environ.with_host_values(entries, {"B": "host", "X": "y"}) == [
        ("A", "1"), ("B", "host"), ("C", ""), ("D", "")]
    with pytest.raises(UsageError):
        environ.cli_entry("1A=2")
    with pytest.raises(UsageError):
        environ.cli_entry("A-B=2")
    assert environ.is_name("A_1") and not environ.is_name("BAD;NAME") and not environ.is_name("1A")


def test_substitution():
    assert environ.substitute("TERM=${TERM}\nX=$TERM", {"TERM": "xterm"}) == "TERM=xterm\nX=$TERM"


def test_render_round_trip():
    values = {"A": "1", "B": "two words", "C": ""}
    assert dict(environ.parse(environ.render(values))) == values


def test_login_defaults_fill_only_unset():
    result = environ.login_defaults({"HOME": "/custom"}, user="u", home="/home/u", shell="/bin/sh", logname="u",
                                    is_root=False)
    assert result["HOME"] == "/custom"
    assert result["USER"] == "u"
    assert "sbin" not in result["PATH"]
    root = environ.login_defaults({}, user="root", home="/root", shell="/bin/sh", logname="u", is_root=True)
    assert "/usr/sbin" in root["PATH"]


def test_ignored_lines_name_what_was_meant():
    text = "# c\n\n  GOOD=1\nexport X=1\nA = b\nENROOT_X=y\n  1BAD=x\n"
    assert environ.ignored_lines(text) == [(4, "export X=1"), (5, "A = b"), (6, "ENROOT_X=y"), (7, "1BAD=x")]
    assert environ.ignored_lines("A=1\n# only\n") == []


def test_source_warnings_once_per_file_and_unset_name():
    files = [("/a.env", "export X=1\nY = 2\n"), ("/b.env", "OK=1\n"), ("environ() of c.sh", "")]
    entries = [("SET", None), ("UNSET", None), ("UNSET", None), ("V", "1")]
    assert environ.source_warnings(files, entries, {"SET": ""}) == [
        "/a.env: ignored line 1 'export X=1', line 2 'Y = 2' (NAME=value expected)",
        "--env UNSET: UNSET is not set here, so the container gets it empty",
    ]
