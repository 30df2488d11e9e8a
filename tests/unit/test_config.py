"""Settings precedence: default < enroot.conf < enroot.conf.d < environment; aliases; truth rule."""

from pathlib import Path

import pytest

from pyenroot.config import expand_variables, is_true, load_settings, parse_settings_file
from pyenroot.errors import ConfigError


def _env(sysconf: Path, **extra: str) -> dict[str, str]:
    return {"HOME": "/home/u", "ENROOT_SYSCONF_PATH": str(sysconf), **extra}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_defaults_follow_xdg(tmp_path):
    settings = load_settings(_env(tmp_path), uid=1234)
    assert settings.get("ENROOT_DATA_PATH") == "/home/u/.local/share/enroot"
    assert settings.get("ENROOT_CACHE_PATH") == "/home/u/.cache/enroot"
    assert settings.get("ENROOT_CONFIG_PATH") == "/home/u/.config/enroot"
    assert settings.get("ENROOT_INIT_SHELL") == "/bin/sh"
    assert settings.get("ENROOT_TEMP_PATH") == "/tmp"
    assert not settings.flag("ENROOT_REMAP_ROOT")
    assert settings.flag("ENROOT_LOGIN_SHELL")


def test_xdg_environment_moves_paths(tmp_path):
    settings = load_settings(_env(tmp_path, XDG_DATA_HOME="/data", TMPDIR="/scratch"), uid=1)
    assert settings.get("ENROOT_DATA_PATH") == "/data/enroot"
    assert settings.get("ENROOT_TEMP_PATH") == "/scratch"


def test_precedence_default_conf_dropin_environment(tmp_path):
    _write(tmp_path / "enroot.conf", "ENROOT_MAX_CONNECTIONS 4\nENROOT_ZSTD_OPTIONS=-3\nENROOT_CONNECT_TIMEOUT 5\n")
    _write(tmp_path / "enroot.conf.d/10-a.conf", "ENROOT_ZSTD_OPTIONS -5\nENROOT_CONNECT_TIMEOUT 6\n")
    _write(tmp_path / "enroot.conf.d/20-b.conf", "ENROOT_CONNECT_TIMEOUT 7\n")
    settings = load_settings(_env(tmp_path, ENROOT_CONNECT_TIMEOUT="9"), uid=1)
    assert settings.get("ENROOT_TRANSFER_TIMEOUT") == "0"  # default
    assert settings.get("ENROOT_MAX_CONNECTIONS") == "4"  # enroot.conf beats default
    assert settings.get("ENROOT_ZSTD_OPTIONS") == "-5"  # drop-in beats enroot.conf
    assert settings.get("ENROOT_CONNECT_TIMEOUT") == "9"  # environment beats all
    assert load_settings(_env(tmp_path), uid=1).get("ENROOT_CONNECT_TIMEOUT") == "7"  # later drop-in wins


def test_empty_environment_value_does_not_override(tmp_path):
    _write(tmp_path / "enroot.conf", "ENROOT_MAX_CONNECTIONS 4\n")
    assert load_settings(_env(tmp_path, ENROOT_MAX_CONNECTIONS=""), uid=1).get("ENROOT_MAX_CONNECTIONS") == "4"


def test_file_values_expand_variables(tmp_path):
    _write(tmp_path / "enroot.conf", 'ENROOT_DATA_PATH "${HOME}/containers"\nENROOT_CACHE_PATH $ENROOT_DATA_PATH/c\n')
    settings = load_settings(_env(tmp_path), uid=1)
    assert settings.get("ENROOT_DATA_PATH") == "/home/u/containers"
    assert settings.get("ENROOT_CACHE_PATH") == "/home/u/containers/c"


@pytest.mark.parametrize(("old", "new", "value"), [
    ("ENROOT_LIBEXEC_PATH", "ENROOT_LIBRARY_PATH", "/opt/lib"),
    ("ENROOT_GZIP_PROG", "ENROOT_GZIP_PROGRAM", "gzip"),
    ("ENROOT_SQUASH_OPTS", "ENROOT_SQUASH_OPTIONS", "-comp xz"),
    ("ENROOT_ROOTFS_RW", "ENROOT_ROOTFS_WRITABLE", "y"),
])
def test_old_spellings_are_aliases(tmp_path, old, new, value):
    assert load_settings(_env(tmp_path, **{old: value}), uid=1).get(new) == value
    _write(tmp_path / "enroot.conf", f"{old} {value}\n")
    assert load_settings(_env(tmp_path), uid=1).get(new) == value
    assert load_settings(_env(tmp_path), uid=1).get(old) == value


def test_current_spelling_beats_alias(tmp_path):
    env = _env(tmp_path, ENROOT_SQUASH_OPTS="-comp xz", ENROOT_SQUASH_OPTIONS="-comp gzip")
    assert load_settings(env, uid=1).get("ENROOT_SQUASH_OPTIONS") == "-comp gzip"


@pytest.mark.parametrize(("value", "expected"), [
    (None, False), ("", False), ("n", False), ("no", False), ("false", False), ("FALSE", False), ("f", False),
    ("off", False), ("OFF", False), ("y", True), ("yes", True), ("1", True), ("0", True), ("true", True),
])
def test_truth_rule_matches_enroot(value, expected):
    assert is_true(value) is expected


def test_unknown_keys_ignored_and_garbage_rejected(tmp_path):
    assert parse_settings_file("FOO bar\n# ENROOT_X y\nENROOT_X z\n", "f") == {"ENROOT_X": "z"}
    with pytest.raises(ConfigError):
        parse_settings_file("1bad value\n", "f")
    _write(tmp_path / "enroot.conf", "this is ( not valid\n")
    with pytest.raises(ConfigError, match="invalid configuration file"):
        load_settings(_env(tmp_path), uid=1)


def test_expand_variables_default_form():
    assert expand_variables("${A:-x}/${B}/$C", {"B": "b", "C": "c"}) == "x/b/c"


def test_overridden_unsets_false_values(tmp_path):
    settings = load_settings(_env(tmp_path, ENROOT_REMAP_ROOT="y"), uid=1)
    assert not settings.overridden(ENROOT_REMAP_ROOT="n").flag("ENROOT_REMAP_ROOT")
    assert settings.overridden(ENROOT_ROOTFS_RW="y").flag("ENROOT_ROOTFS_WRITABLE")


def test_settings_file_variables_reach_child_environments(tmp_path):
    _write(tmp_path / "enroot.conf", "NVIDIA_DRIVER_CAPABILITIES all\nhttps_proxy http://proxy:3128\nFOO bar\n")
    child_env = load_settings(_env(tmp_path), uid=1).environ()
    assert child_env["NVIDIA_DRIVER_CAPABILITIES"] == "all"
    assert child_env["https_proxy"] == "http://proxy:3128"
    assert "FOO" not in child_env and "HOME" not in child_env
    assert child_env["ENROOT_DATA_PATH"] == "/home/u/.local/share/enroot"


@pytest.mark.parametrize(("value", "expected"), [("y", True), ("n", False), ("off", None), ("yes", None),
                                                 ("0", None), ("", None)])
def test_plugin_flags_are_exactly_y_or_n(value, expected):
    """The plugin's own y/n arguments: the user's words were parsed in C already, so anything else is a bug."""
    import argparse

    from pyenroot.commands.spank import plugin_flag

    if expected is None:
        with pytest.raises(argparse.ArgumentTypeError):
            plugin_flag(value)
    else:
        assert plugin_flag(value) is expected
