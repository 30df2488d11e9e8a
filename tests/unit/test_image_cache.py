"""The built-image cache's keys, records and checks, and prune's choice (pure, or plain files in tmp_path)."""

from __future__ import annotations

import os
import struct

import pytest

from pyenroot.content.blobs import hold_lock
from pyenroot.errors import UsageError
from pyenroot.image import prune
from pyenroot.image.built import BuildKey, BuiltEntry, BuiltImages, squash_description
from pyenroot.image.squash import translate_options
from pyenroot.squashfs import problem as squashfs_problem

KEY = BuildKey("sha256:" + "a" * 64, "linux/amd64/", "docker://r#x/y:1", "{}", "b")


def superblock(used: int) -> bytes:
    return struct.pack("<4s24xH10xQ", b"hsqs", 4, used) + bytes(48)  # magic, major version 4, bytes_used


def test_every_field_changes_the_key():
    names = {KEY.name}
    for field in ("reference_digest", "platform", "source_uri", "squash", "builder"):
        names.add(BuildKey(**{**KEY.__dict__, field: "other"}).name)
    assert len(names) == 6


def test_squash_options_that_change_bytes_change_the_description():
    assert squash_description(translate_options("-comp lz4")) != squash_description(translate_options("-comp gzip"))
    assert squash_description(translate_options("-comp lz4 -processors 2")) == squash_description(
        translate_options("-comp lz4"))


@pytest.mark.parametrize(("head", "size", "problem"), [
    (superblock(4096), 4096, None), (superblock(4000), 4096, None),
    (superblock(8192), 4096, "truncated squashfs image: x.sqsh has 4096 of 8192 bytes"),
    (b"XXXX" + superblock(10)[4:], 4096, "not a squashfs image: x.sqsh"), (b"hsqs", 4, "not a squashfs image: x.sqsh")])
def test_squashfs_problems(head, size, problem):
    found = squashfs_problem(head, size, "x.sqsh")
    assert (found is None) if problem is None else (found.message == problem)


def plant(images: BuiltImages, size: int = 4096, recorded: int | None = None) -> None:
    images.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    images.image(KEY.name).write_bytes(superblock(size).ljust(size, b"\0"))
    images.add(KEY, BuiltEntry(KEY, size=size if recorded is None else recorded, entries=3))


def test_lookup_trusts_an_intact_entry_and_removes_a_damaged_one(tmp_path):
    images = BuiltImages(tmp_path)
    plant(images)
    assert images.lookup(KEY).entries == 3
    assert images.lookup(BuildKey(**{**KEY.__dict__, "platform": "linux/arm64/"})) is None
    plant(images, recorded=8192)  # truncated since it was recorded
    assert images.lookup(KEY) is None
    assert not images.image(KEY.name).exists() and not images.record(KEY.name).exists()


def test_an_entry_others_may_write_is_not_used(tmp_path):
    images = BuiltImages(tmp_path)
    plant(images)
    images.image(KEY.name).chmod(0o666)
    assert images.lookup(KEY) is None


def test_a_held_entry_is_not_removed(tmp_path):
    images = BuiltImages(tmp_path)
    plant(images)
    fd = images.hold(KEY.name)
    assert not images.remove_unused(KEY.name)
    os.close(fd)
    assert images.remove_unused(KEY.name)
    assert images.entries() == []


def test_a_lock_file_removed_while_waiting_is_taken_again(tmp_path):
    path = tmp_path / "x.lock"
    fd = hold_lock(path, exclusive=True)
    assert hold_lock(path, exclusive=False, wait=False) is None
    path.unlink()
    os.close(fd)
    again = hold_lock(path, exclusive=False, wait=False)
    assert again is not None and os.fstat(again).st_nlink == 1


def entry(name: str, size: int, last_use: float) -> prune.CacheEntry:
    return prune.CacheEntry("blob", name, size, last_use)


def test_prune_removes_the_least_recently_used_until_the_size_fits():
    entries = [entry("new", 10, 300), entry("old", 10, 100), entry("mid", 10, 200)]
    result = prune.choose(entries, prune.Limits(max_size=15), 400, lambda e: True)
    assert [e.name for e in result.removed] == ["old", "mid"] and result.remaining == 10


def test_prune_skips_what_is_in_use_and_takes_the_next():
    entries = [entry("new", 10, 300), entry("old", 10, 100), entry("mid", 10, 200)]
    result = prune.choose(entries, prune.Limits(max_size=15), 400, lambda e: e.name != "old")
    assert [e.name for e in result.removed] == ["mid", "new"] and [e.name for e in result.in_use] == ["old"]
    assert result.remaining == 10


def test_prune_by_age():
    entries = [entry("new", 10, 390), entry("old", 10, 100)]
    result = prune.choose(entries, prune.Limits(older_than=60), 400, lambda e: True)
    assert [e.name for e in result.removed] == ["old"]


@pytest.mark.parametrize(("text", "size"), [("4096", 4096), ("10K", 10240), ("1.5G", 3 << 29), ("2MiB", 2 << 20),
                                            ("1t", 1 << 40)])
def test_sizes(text, size):
    assert prune.parse_size(text) == size


@pytest.mark.parametrize(("text", "seconds"), [("30", 30), ("90m", 5400), ("12h", 43200), ("30d", 2592000),
                                               ("2w", 1209600)])
def test_ages(text, seconds):
    assert prune.parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "-1G", "ten", "5X"])
def test_bad_sizes_and_ages(text):
    with pytest.raises(UsageError):
        prune.parse_size(text)
    with pytest.raises(UsageError):
        prune.parse_age(text)
