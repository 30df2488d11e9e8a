"""The pure parts of bundles: default names, what --all records, bundle.json, --info."""

from __future__ import annotations

import os
from pathlib import Path

from pyenroot.bundle import model


def info(**changes) -> model.BundleInfo:
    values = dict(description="none", target="box", image_name="box.sqsh", image_size=3 * 1024 * 1024,
                  compression="lz4", created="2026-01-01T00:00:00Z", version="0.1.0", checksum=False,
                  user_config=False, settings={})
    values.update(changes)
    return model.BundleInfo(**values)


def test_default_output_and_target_follow_enroot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = model.output_path(None, Path("/images/nvidia+pytorch+24.01.sqsh"))
    assert out == tmp_path / "nvidia+pytorch+24.01.run"
    assert model.default_target(out) == "nvidia+pytorch+24.01"
    assert model.output_path(None, Path("/images/plain")) == tmp_path / "plain.run"
    assert model.output_path("sub/x.bin", Path("a.sqsh")) == Path(os.path.abspath("sub/x.bin"))
    assert model.default_target(Path("/b/x.bin")) == "x.bin"
    assert model.default_target(Path("/b/.run")) == ".run"


def test_all_records_settings_but_not_paths():
    values = {"ENROOT_DATA_PATH": "/home/me/data", "ENROOT_LIBRARY_PATH": "/x", "ENROOT_REMAP_ROOT": "y",
              "ENROOT_MAX_CONNECTIONS": "10", "XDG_CACHE_HOME": "/c", "NVIDIA_VISIBLE_DEVICES": "all"}
    assert model.captured_settings(values) == {"ENROOT_MAX_CONNECTIONS": "10", "ENROOT_REMAP_ROOT": "y"}


def test_info_round_trips_through_json():
    original = info(checksum=True, user_config=True, settings={"ENROOT_REMAP_ROOT": "y"},
                    description='quotes " and $(no expansion)')
    assert model.BundleInfo.from_json(original.to_json()) == original


def test_describe_says_what_the_bundle_holds():
    text = model.describe(info(description="my box", checksum=True, user_config=True,
                               settings={"ENROOT_REMAP_ROOT": "y"}))
    assert "Description:   my box" in text
    assert "box.sqsh, 3.0 MB, lz4" in text
    assert "SHA-256" in text
    assert "1 settings (--all)" in text
    assert "Checksum:      none" in model.describe(info())
