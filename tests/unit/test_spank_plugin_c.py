"""The SPANK plugin's Slurm-free C code (options, environment blocks, argv, result values) on hostile input,
built with AddressSanitizer and UBSan: spank_plugin/tests/hostile.c, through `make -C spank_plugin check`."""

import os
import subprocess
from pathlib import Path

import pytest

from pyenroot.config import FALSE_WORDS, is_true

PLUGIN = Path(__file__).resolve().parents[2] / "spank_plugin"


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> tuple[Path, str]:
    """Build the driver into a temporary directory and run every case once: (driver, its output)."""
    build = tmp_path_factory.mktemp("hostile")
    done = subprocess.run(["make", "-s", "-C", str(PLUGIN), "check", f"TEST_BUILD={build}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return build / "hostile", done.stdout + done.stderr


def test_hostile_input_passes_under_sanitizers(checked):
    _, output = checked
    assert "ok " in output
    assert "ERROR: AddressSanitizer" not in output and "runtime error" not in output


def test_plugin_booleans_agree_with_config_is_true(checked):
    """Every word the Python side takes as off is off in plugstack.conf too; pyxis's 0/1 keep their meaning, and
    a word neither side lists is refused (-1) rather than taken as on."""
    driver, _ = checked
    words = [*sorted(FALSE_WORDS - {""}), "0", "1", "y", "yes", "true", "TRUE", "on", "ON", "maybe", "nO"]
    done = subprocess.run([str(driver), "bool", *words], capture_output=True, text=True,
                          env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1"})
    assert done.returncode == 0, done.stderr
    got = dict(zip(words, (int(v) for v in done.stdout.split()), strict=True))
    for word in FALSE_WORDS - {""}:
        assert got[word] == 0, word
    for word in ("1", "y", "yes", "true", "TRUE", "on", "ON"):
        assert got[word] == 1 and is_true(word), word
    assert got["0"] == 0
    assert got["off"] == got["OFF"] == 0 and not is_true("off")  # nowhere is "off" on
    assert got["maybe"] == got["nO"] == -1
