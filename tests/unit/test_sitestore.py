"""The image store's index (pure): lookups by digest and platform, tags within their TTL, removal, the file
format; and the per-node checksum stamp (plain files in tmp_path)."""

from __future__ import annotations

import pytest

from pyenroot.image.sitestore import (
    SiteStore,
    StoreEntry,
    StoreIndex,
    TagEntry,
    entry_name,
    tag_reference,
)

AMD64, ARM64 = "linux/amd64/", "linux/arm64/v8"
INDEX_DIGEST = "sha256:" + "1" * 64


def entry(manifest: str, platform: str = AMD64, reference: str = INDEX_DIGEST, **extra) -> StoreEntry:
    digest = "sha256:" + manifest * 64
    return StoreEntry(name=entry_name(digest, platform), reference_digest=reference, manifest_digest=digest,
                      platform=platform, source_uri="docker://r#x/y:1", size=10, sha256="sha256:" + "f" * 64,
                      **extra)


def indexed(*entries: StoreEntry, tags: tuple[TagEntry, ...] = ()) -> StoreIndex:
    index = StoreIndex()
    for e in entries:
        index.add(e)
    for tag in tags:
        index.tags[(tag.reference, tag.platform)] = tag
    return index


def test_entry_names_are_the_manifest_and_the_platform():
    assert entry_name("sha256:" + "a" * 64, ARM64) == "a" * 64 + ".linux-arm64-v8"
    for bad in ("sha256:../../etc", "md5:" + "a" * 32, "sha256:" + "A" * 64):
        with pytest.raises(ValueError):
            entry_name(bad, AMD64)


def test_an_index_digest_or_a_manifest_digest_finds_the_platforms_image():
    amd, arm = entry("a"), entry("b", ARM64)
    index = indexed(amd, arm)
    assert index.find(INDEX_DIGEST, AMD64) == amd
    assert index.find(INDEX_DIGEST, ARM64) == arm
    assert index.find(arm.manifest_digest, ARM64) == arm
    assert index.find(arm.manifest_digest, AMD64) is None
    assert index.find("sha256:" + "9" * 64, AMD64) is None


def test_a_tag_is_taken_only_within_the_ttl():
    ref = tag_reference("r", "x/y", None)
    assert ref == "docker://r#x/y:latest"
    index = indexed(entry("a"), tags=(TagEntry(ref, AMD64, INDEX_DIGEST, resolved=1000.0),))
    assert index.fresh_tag(ref, AMD64, now=1059.0, ttl=60) is not None
    assert index.fresh_tag(ref, AMD64, now=1060.0, ttl=60) is None
    assert index.fresh_tag(ref, AMD64, now=1001.0, ttl=0) is None
    assert index.fresh_tag(ref, AMD64, now=900.0, ttl=3600) is None  # resolved "in the future": a clock moved
    assert index.fresh_tag(ref, ARM64, now=1001.0, ttl=60) is None
    assert index.fresh_tag("docker://r#x/y:2", AMD64, now=1001.0, ttl=60) is None


def test_removing_a_tag_keeps_images_another_tag_names():
    one, two = tag_reference("r", "x/y", "1"), tag_reference("r", "x/y", "2")
    old = entry("b", reference="sha256:" + "2" * 64)
    index = indexed(entry("a"), old, tags=(TagEntry(one, AMD64, INDEX_DIGEST, 1.0),
                                           TagEntry(two, AMD64, INDEX_DIGEST, 1.0),
                                           TagEntry("docker://r#x/y:old", AMD64, old.reference_digest, 1.0)))
    assert index.knows(one) and not index.knows("docker://r#x/y:3")
    assert index.remove(one) == []
    assert [e.name for e in index.remove(two)] == [entry("a").name]
    assert set(index.images) == {old.name}


def test_removing_a_digest_removes_every_platform_and_its_tags():
    ref = tag_reference("r", "x/y", "1")
    index = indexed(entry("a"), entry("b", ARM64), tags=(TagEntry(ref, AMD64, INDEX_DIGEST, 1.0),
                                                         TagEntry(ref, ARM64, INDEX_DIGEST, 1.0)))
    assert len(index.remove(INDEX_DIGEST)) == 2
    assert index.images == {} and index.tags == {}
    assert not index.knows(INDEX_DIGEST)


def test_the_index_reads_back_what_it_wrote():
    ref = tag_reference("r", "x/y", "1")
    index = indexed(entry("a", warnings=("w",), entries=3), tags=(TagEntry(ref, AMD64, INDEX_DIGEST, 5.0),))
    again = StoreIndex.from_json(index.to_json())
    assert again == index
    assert again.images[entry("a").name].warnings == ("w",)


@pytest.mark.parametrize("text", ['{"version": 2, "images": [], "tags": []}', '{"version": 1}', "[]",
                                  '{"version": 1, "images": [{"name": "x"}], "tags": []}', "not json"])
def test_a_bad_index_is_refused(text):
    with pytest.raises(ValueError):
        StoreIndex.from_json(text)


def test_an_entry_named_after_another_digest_is_refused():
    text = indexed(entry("a")).to_json().replace(entry("a").name, "b" * 64 + ".linux-amd64")
    with pytest.raises(ValueError, match="not named after its digest"):
        StoreIndex.from_json(text)


def test_the_checksum_is_read_once_per_file(tmp_path):
    import hashlib

    store = SiteStore(tmp_path / "store")
    store.images_dir.mkdir(parents=True)
    data = b"squashfs bytes" * 100
    e = entry("a")
    e = StoreEntry(**{**e.__dict__, "size": len(data), "sha256": "sha256:" + hashlib.sha256(data).hexdigest()})
    store.image(e.name).write_bytes(data)
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    assert store.verify(e, stamps) is None
    assert (stamps / e.name).exists()
    # Rewritten in place with the same size: the stamp no longer fits the file (its ctime changed).
    store.image(e.name).write_bytes(data.replace(b"bytes", b"BYTES"))
    assert "does not match the checksum" in store.verify(e, stamps)
    store.image(e.name).write_bytes(data[:-1])
    assert "bytes" in store.verify(e, stamps) and "were recorded" in store.verify(e, stamps)
