"""The one container naming rule: the validator, start's quick check and what the docs and hint say."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyenroot import names
from pyenroot.config import Settings
from pyenroot.containers import names as container_names
from pyenroot.errors import UsageError
from pyenroot.runtime import assemble

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("name", ["busybox", "pyxis_1234_step", "nvidia+pytorch+24.01", "ubuntu+sha256:0a1b",
                                  "alice@host", "x" * names.NAME_MAX_LENGTH])
def test_valid_names_everywhere(tmp_path, name):
    """The store (create, export, remove, load) and start's quick path without the store agree."""
    assert names.validate_name(name) == name
    data = tmp_path / "data"
    assert container_names.container_dir(Settings({"ENROOT_DATA_PATH": str(data)}), name) == data / name
    (data / name).mkdir(parents=True)
    assert assemble._plain_container(Settings({"ENROOT_DATA_PATH": str(data)}), name) == data / name


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "-rf", ":a", "@a", "a/b", "a b", "a*", "é",
                                  "x" * (names.NAME_MAX_LENGTH + 1)])
def test_invalid_names_everywhere(tmp_path, name):
    with pytest.raises(UsageError):
        names.validate_name(name)
    assert not names.is_valid_name(name)
    assert assemble._plain_container(Settings({"ENROOT_DATA_PATH": str(tmp_path)}), name) is None


def test_the_hint_states_the_rule():
    with pytest.raises(UsageError) as info:
        names.validate_name("a*b")
    assert info.value.hint == names.RULE
    assert f"'{names.NAME_CHARACTERS}'" in names.RULE and str(names.NAME_MAX_LENGTH) in names.RULE


def test_the_docs_state_the_rule_once():
    """runtime.md states the rule (the same characters and length as the code); other pages link to it."""
    stated = {page.name: page.read_text().count(f"`{names.NAME_CHARACTERS}`") for page in DOCS.glob("*.md")}
    assert stated.pop("runtime.md") == 1
    assert not any(stated.values()), stated
    runtime = (DOCS / "runtime.md").read_text()
    assert f"at most {names.NAME_MAX_LENGTH} characters" in runtime
    for page in DOCS.glob("*.md"):
        for other in ("`._+-`", "`._+@:-`", "`._+:-`"):
            assert other not in page.read_text(), (page.name, other)
