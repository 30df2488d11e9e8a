"""Import plumbing: output names, the unnamed output file, the read-ahead plan."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyenroot.errors import StorageError
from pyenroot.image import importer


def test_output_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert importer.output_path(None, "ubuntu+latest") == tmp_path / "ubuntu+latest.sqsh"
    assert importer.output_path(None, "x.sqsh") == tmp_path / "x.sqsh"
    assert importer.output_path("sub/out.img", "ignored") == tmp_path / "sub/out.img"


def test_temp_output_is_invisible_until_commit(tmp_path):
    final = tmp_path / "image.sqsh"
    out = importer.TempOutput(final)
    with open(out.path, "wb") as f:
        f.write(b"content")
    assert os.listdir(tmp_path) == [] or out.named is not None
    out.commit()
    assert final.read_bytes() == b"content"
    assert os.listdir(tmp_path) == ["image.sqsh"]


def test_temp_output_never_replaces(tmp_path):
    final = tmp_path / "image.sqsh"
    out = importer.TempOutput(final)
    final.write_bytes(b"precious")
    with pytest.raises(StorageError, match="already exists"):
        out.commit()
    out.discard()
    assert final.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["image.sqsh"]


def test_temp_output_discarded(tmp_path):
    out = importer.TempOutput(tmp_path / "image.sqsh")
    Path(out.path).write_bytes(b"half")
    out.discard()
    assert os.listdir(tmp_path) == []


def test_temp_output_missing_directory(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        importer.TempOutput(tmp_path / "missing" / "image.sqsh")


@pytest.mark.parametrize("cpus,expected", [(1, (1, 0)), (2, (1, 0)), (3, (2, importer.READ_AHEAD_BUDGET)),
                                           (64, (4, importer.READ_AHEAD_BUDGET))])
def test_read_ahead_plan(cpus, expected):
    assert importer.read_ahead_plan(cpus) == expected
