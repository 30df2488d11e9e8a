"""Import plumbing: output names, the unnamed output file, the read-ahead plan."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from pyenroot.content.model import Descriptor, ResolvedImage
from pyenroot.errors import StorageError, UsageError
from pyenroot.image import layerfetch, output, pipeline
from pyenroot.image.progress import ImportProgress


def test_output_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert output.output_path(None, "ubuntu+latest") == tmp_path / "ubuntu+latest.sqsh"
    assert output.output_path(None, "x.sqsh") == tmp_path / "x.sqsh"
    assert output.output_path("sub/out.img", "ignored") == tmp_path / "sub/out.img"


def test_output_into_a_directory(tmp_path, monkeypatch):
    """`-o DIR` writes the default name into DIR; a trailing `/` means a directory even before it exists."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "link").symlink_to("images")
    assert output.output_path("images", "ubuntu+latest") == tmp_path / "images/ubuntu+latest.sqsh"
    assert output.output_path(str(tmp_path / "images"), "x.sqsh") == tmp_path / "images/x.sqsh"
    assert output.output_path("link", "a+1") == tmp_path / "link/a+1.sqsh"
    assert output.output_path(".", "a+1") == tmp_path / "a+1.sqsh"
    assert output.output_path("missing/", "a+1") == tmp_path / "missing/a+1.sqsh"
    assert output.output_path("images/out.sqsh", "a+1") == tmp_path / "images/out.sqsh"


def test_temp_output_is_invisible_until_commit(tmp_path):
    final = tmp_path / "image.sqsh"
    out = output.TempOutput(final)
    with open(out.path, "wb") as f:
        f.write(b"content")
    assert os.listdir(tmp_path) == [] or out.named is not None
    out.commit()
    assert final.read_bytes() == b"content"
    assert os.listdir(tmp_path) == ["image.sqsh"]


def test_temp_output_never_replaces(tmp_path):
    final = tmp_path / "image.sqsh"
    out = output.TempOutput(final)
    final.write_bytes(b"precious")
    with pytest.raises(StorageError, match="already exists"):
        out.commit()
    out.discard()
    assert final.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["image.sqsh"]


def test_temp_output_discarded(tmp_path):
    out = output.TempOutput(tmp_path / "image.sqsh")
    Path(out.path).write_bytes(b"half")
    out.discard()
    assert os.listdir(tmp_path) == []


def test_temp_output_missing_directory(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        output.TempOutput(tmp_path / "missing" / "image.sqsh")


@pytest.mark.parametrize("cpus,expected", [(1, (1, 0)), (2, (1, 0)), (3, (2, pipeline.READ_AHEAD_BUDGET)),
                                           (64, (4, pipeline.READ_AHEAD_BUDGET))])
def test_read_ahead_plan(cpus, expected):
    assert pipeline.read_ahead_plan(cpus) == expected


def test_an_empty_output_name_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="the name is empty"):
        output.output_path("", "ubuntu+latest")
    assert os.listdir(tmp_path) == []


class _SlowRegistry:
    """A registry whose downloads report progress until told to stop (a bound, not a timing: one that never
    notices runs out its loop and says so)."""

    def __init__(self):
        self.started = threading.Event()
        self.fetched: list[str] = []
        self.stopped = False

    def fetch_blob(self, descriptor, progress):
        self.fetched.append(descriptor.digest)
        self.started.set()
        try:
            for done in range(20000):
                progress.advance(descriptor.digest, done, None)
                time.sleep(0.001)
        except layerfetch.DownloadStopped:
            self.stopped = True
            raise
        return "/nonexistent"


def test_closing_a_layer_fetch_stops_its_downloads():
    layers = [Descriptor("t", f"sha256:{c * 64}", 10) for c in "12"]
    source = _SlowRegistry()
    fetch = layerfetch.LayerFetch(source, ResolvedImage("x", "sha256:" + "0" * 64, {}, layers),
                                  ImportProgress(io.StringIO()), connections=1)
    source.started.wait()
    fetch.close()
    assert fetch.pool is not None
    fetch.pool.shutdown(wait=True)
    assert source.stopped
    assert source.fetched == [layers[1].digest]  # the top layer first; the other never started
    assert fetch.layers[0].cancelled()
