"""Manifest and index parsing, layer media types, platform names and platform choice."""

import json

import pytest

from pyenroot.errors import ImageError, UsageError
from pyenroot.registry import manifest as m
from pyenroot.registry.manifest import Index, Manifest, Platform, normalize_platform, parse_manifest, select_platform

D = ["sha256:" + c * 64 for c in "0123456789abcdef"]


def descriptor(digest, media_type="application/vnd.oci.image.layer.v1.tar+gzip", **extra):
    return {"mediaType": media_type, "digest": digest, "size": 10, **extra}


def image_manifest(media_type=m.OCI_MANIFEST, layer_type="application/vnd.oci.image.layer.v1.tar+gzip"):
    return json.dumps({"schemaVersion": 2, "mediaType": media_type,
                       "config": descriptor(D[0], "application/vnd.oci.image.config.v1+json"),
                       "layers": [descriptor(D[1], layer_type), descriptor(D[2], layer_type)]}).encode()


def index(entries, media_type=m.OCI_INDEX):
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}).encode()


def entry(digest, arch, os_name="linux", variant=None):
    platform = {"architecture": arch, "os": os_name}
    if variant:
        platform["variant"] = variant
    return descriptor(digest, m.OCI_MANIFEST, platform=platform)


@pytest.mark.parametrize("arch,expected", [
    ("x86_64", Platform("linux", "amd64")), ("amd64", Platform("linux", "amd64")),
    ("aarch64", Platform("linux", "arm64", "v8")), ("arm64", Platform("linux", "arm64", "v8")),
    ("arm64/v8", Platform("linux", "arm64", "v8")), ("linux/arm64", Platform("linux", "arm64", "v8")),
    ("ppc64le", Platform("linux", "ppc64le")), ("armv7l", Platform("linux", "arm", "v7")),
])
def test_normalize_platform(arch, expected):
    assert normalize_platform(arch) == expected


def test_normalize_platform_defaults_to_the_host():
    assert normalize_platform(None, host_machine="aarch64") == Platform("linux", "arm64", "v8")
    assert normalize_platform(None).architecture in ("amd64", "arm64", "ppc64le", "s390x", "riscv64", "arm", "386")


def test_unknown_architecture():
    with pytest.raises(UsageError, match="unsupported architecture: sparc"):
        normalize_platform("sparc")


@pytest.mark.parametrize("media_type", [m.OCI_MANIFEST, m.DOCKER_MANIFEST])
def test_parse_manifest(media_type):
    parsed = parse_manifest(image_manifest(media_type))
    assert isinstance(parsed, Manifest)
    assert parsed.config.digest == D[0]
    assert [layer.digest for layer in parsed.layers] == [D[1], D[2]]  # bottom first, as written


def test_media_type_from_content_type_when_the_body_has_none():
    body = json.dumps({"schemaVersion": 2, "manifests": [entry(D[3], "amd64")]}).encode()
    assert isinstance(parse_manifest(body, m.DOCKER_LIST + "; charset=utf-8"), Index)


@pytest.mark.parametrize("body,content_type,message", [
    (b'{"schemaVersion": 1, "fsLayers": []}', None, "schema 1"),
    (b'{"schemaVersion": 2, "mediaType": "application/x-other"}', None, "unsupported manifest media type"),
    (b"not json", None, "not JSON"),
    (b"[]", None, "not a JSON object"),
    (json.dumps({"mediaType": m.OCI_MANIFEST, "config": {}, "layers": []}).encode(), None, "without a digest"),
    (json.dumps({"mediaType": m.OCI_MANIFEST, "config": descriptor("md5:x"), "layers": []}).encode(), None,
     "unsupported digest"),
])
def test_bad_manifests(body, content_type, message):
    with pytest.raises(ImageError, match=message):
        parse_manifest(body, content_type)


def test_layer_media_types():
    assert m.layer_compression("application/vnd.oci.image.layer.v1.tar+zstd") == "zstd"
    assert m.layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip") == "gzip"
    assert m.layer_compression("application/vnd.oci.image.layer.v1.tar") == "none"
    with pytest.raises(ImageError, match="unsupported layer media type"):
        m.check_layers(parse_manifest(image_manifest(layer_type="application/vnd.oci.image.layer.v1.tar+encrypted")))


def test_select_platform():
    idx = parse_manifest(index([entry(D[3], "amd64"), entry(D[4], "arm64", variant="v8"), entry(D[5], "ppc64le")]))
    assert select_platform(idx, Platform("linux", "arm64", "v8")).digest == D[4]
    assert select_platform(idx, Platform("linux", "amd64")).digest == D[3]


def test_select_platform_follows_a_nested_index_without_platform():
    idx = parse_manifest(index([entry(D[3], "s390x"), descriptor(D[4], m.OCI_INDEX)]))
    assert select_platform(idx, Platform("linux", "amd64")).digest == D[4]  # the caller looks inside it


def test_select_platform_prefers_the_exact_variant_and_accepts_a_missing_one():
    idx = parse_manifest(index([entry(D[3], "arm64"), entry(D[4], "arm64", variant="v8")]))
    assert select_platform(idx, Platform("linux", "arm64", "v8")).digest == D[4]
    idx = parse_manifest(index([entry(D[3], "arm64")]))
    assert select_platform(idx, Platform("linux", "arm64", "v8")).digest == D[3]
    idx = parse_manifest(index([entry(D[3], "arm", variant="v6")]))
    with pytest.raises(ImageError):
        select_platform(idx, Platform("linux", "arm", "v7"))


def test_no_matching_platform_lists_the_available_ones():
    idx = parse_manifest(index([entry(D[3], "amd64"), entry(D[4], "s390x"), entry(D[5], "amd64", "windows"),
                                entry(D[6], "unknown", "unknown")]))
    with pytest.raises(ImageError) as info:
        select_platform(idx, Platform("linux", "arm64", "v8"))
    assert "no matching platform for linux/arm64/v8" in info.value.message
    assert info.value.hint.startswith("available: linux/amd64, linux/s390x, windows/amd64;")


def test_verify_digest():
    m.verify_digest(b"abc", m.sha256_digest(b"abc"), "x")
    with pytest.raises(ImageError, match="digest mismatch for manifest"):
        m.verify_digest(b"abd", m.sha256_digest(b"abc"), "manifest")
