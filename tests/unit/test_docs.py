"""The user documentation stays true to the code: the settings table and the links between the docs."""

from __future__ import annotations

import re
from pathlib import Path

from pyenroot import config

DOCS = Path(__file__).resolve().parents[2] / "docs"
README = DOCS.parent / "README.md"
# The package directory depends on where pyenroot is installed; the docs name it generically.
PACKAGE_PLACEHOLDER = "<package>/data"


def documented_table() -> str:
    """The generated table as docs/settings.md shows it."""
    return config.settings_table_markdown().replace(str(config.PACKAGE_DATA), PACKAGE_PLACEHOLDER)


def test_settings_table_matches_config():
    text = (DOCS / "settings.md").read_text()
    assert documented_table() in text, (
        "docs/settings.md is out of date; regenerate its table from "
        "pyenroot.config.settings_table_markdown() (package path written as <package>/data)")


def test_every_setting_is_in_the_table_once():
    text = (DOCS / "settings.md").read_text()
    for setting in config.SETTINGS:
        assert text.count(f"| `{setting.name}` |") == 1, setting.name


def test_relative_links_point_to_existing_files():
    for page in [README, *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
