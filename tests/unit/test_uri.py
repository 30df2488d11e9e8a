"""URI grammar: enroot's nine docker:// forms, Docker Hub canonicalisation, local engines and archives."""

import pytest

from pyenroot.errors import UsageError
from pyenroot.registry.uri import DOCKER_HUB, parse_uri

DIGEST = "sha256:" + "ab" * 32

VALID = [
    # uri, registry, repository, tag, digest, user
    ("docker://ubuntu", DOCKER_HUB, "library/ubuntu", "latest", None, None),
    ("docker://ubuntu:22.04", DOCKER_HUB, "library/ubuntu", "22.04", None, None),
    (f"docker://ubuntu@{DIGEST}", DOCKER_HUB, "library/ubuntu", None, DIGEST, None),
    (f"docker://ubuntu:22.04@{DIGEST}", DOCKER_HUB, "library/ubuntu", "22.04", DIGEST, None),
    ("docker://nvidia/cuda:12.0", DOCKER_HUB, "nvidia/cuda", "12.0", None, None),
    ("docker://nvcr.io/nvidia/pytorch:24.01", "nvcr.io", "nvidia/pytorch", "24.01", None, None),
    ("docker://localhost:5000/a/b", "localhost:5000", "a/b", "latest", None, None),
    (f"docker://nvcr.io/nvidia/pytorch@{DIGEST}", "nvcr.io", "nvidia/pytorch", None, DIGEST, None),
    ("docker://nvcr.io#nvidia/pytorch:24.01", "nvcr.io", "nvidia/pytorch", "24.01", None, None),
    ("docker://registry#repo", "registry", "repo", "latest", None, None),
    (f"docker://nvcr.io#nvidia/pytorch:24.01@{DIGEST}", "nvcr.io", "nvidia/pytorch", "24.01", DIGEST, None),
    (f"docker://nvcr.io#nvidia/pytorch@{DIGEST}", "nvcr.io", "nvidia/pytorch", None, DIGEST, None),
    ("docker://$oauthtoken@nvcr.io#nvidia/pytorch:24.01", "nvcr.io", "nvidia/pytorch", "24.01", None, "$oauthtoken"),
    ("docker://alice@ubuntu", DOCKER_HUB, "library/ubuntu", "latest", None, "alice"),
    ("docker://docker.io#ubuntu", DOCKER_HUB, "library/ubuntu", "latest", None, None),
    ("docker://index.docker.io/library/ubuntu:20.04", DOCKER_HUB, "library/ubuntu", "20.04", None, None),
    ("docker://registry-1.docker.io#foo/bar", DOCKER_HUB, "foo/bar", "latest", None, None),
    ("docker://127.0.0.1:5000#test/busybox:latest", "127.0.0.1:5000", "test/busybox", "latest", None, None),
]


@pytest.mark.parametrize("uri,registry,repository,tag,digest,user", VALID)
def test_valid_docker_uris(uri, registry, repository, tag, digest, user):
    ref = parse_uri(uri)
    assert (ref.scheme, ref.registry, ref.repository, ref.tag, ref.digest, ref.user) == \
        ("docker", registry, repository, tag, digest, user)


@pytest.mark.parametrize("uri", [
    "ubuntu", "http://ubuntu", "docker://", "docker://Ubuntu", "docker://nvcr.io#Nvidia/x", "docker://a#",
    "docker://ubuntu@sha256:abc", "docker://ubuntu:tag with space", "docker://a/b/c:", "docker://#repo",
    "docker://a##b", "podman://", "podman://a b", "oci-archive://", "docker://ubuntu:-bad",
])
def test_invalid_uris_show_the_grammar(uri):
    with pytest.raises(UsageError) as info:
        parse_uri(uri)
    assert "invalid image reference" in info.value.message
    assert "docker://[USER@][REGISTRY#]IMAGE" in (info.value.hint or "")


@pytest.mark.parametrize("uri,name", [
    ("docker://nvcr.io#nvidia/pytorch:24.01", "nvidia+pytorch+24.01"),
    ("docker://ubuntu", "ubuntu+latest"),
    ("docker://ubuntu:22.04", "ubuntu+22.04"),
    ("docker://nvidia/cuda:12.0", "nvidia+cuda+12.0"),
    (f"docker://ubuntu@{DIGEST}", f"ubuntu+{DIGEST}"),
    ("docker://127.0.0.1:5000#library/x:1", "library+x+1"),  # library/ stripped only on Docker Hub
    ("podman://docker.io/library/alpine:3.19", "docker.io+library+alpine+3.19"),
    ("dockerd://alpine", "alpine"),
    ("oci-archive:///tmp/images/alpine.tar", "alpine"),
    ("oci-archive:///tmp/alpine.tar:v1", "alpine+v1"),
    ("docker-archive://./busybox.tar", "busybox"),
])
def test_default_image_name(uri, name):
    assert parse_uri(uri).default_image_name() == name


@pytest.mark.parametrize("uri,canonical", [
    ("docker://ubuntu", "docker://registry-1.docker.io#library/ubuntu:latest"),
    ("docker://nvcr.io/nvidia/pytorch:24.01", "docker://nvcr.io#nvidia/pytorch:24.01"),
    (f"docker://a.io#x@{DIGEST}", f"docker://a.io#x@{DIGEST}"),
    (f"docker://a.io#x:1@{DIGEST}", f"docker://a.io#x:1@{DIGEST}"),
])
def test_canonical(uri, canonical):
    assert parse_uri(uri).canonical() == canonical


def test_reference_prefers_the_digest():
    assert parse_uri(f"docker://a.io#x:1@{DIGEST}").reference == DIGEST
    assert parse_uri("docker://a.io#x:1").reference == "1"


def test_engines_and_archives():
    ref = parse_uri("podman://localhost:5000/team/app:v2")
    assert (ref.scheme, ref.repository, ref.tag) == ("podman", "localhost:5000/team/app", "v2")
    ref = parse_uri("dockerd://alpine")
    assert (ref.scheme, ref.repository, ref.tag) == ("dockerd", "alpine", None)
    ref = parse_uri("docker-archive:///srv/x:y/image.tar")
    assert (ref.scheme, ref.path, ref.tag) == ("docker-archive", "/srv/x:y/image.tar", None)
    ref = parse_uri("oci-archive:///srv/layout.tar:latest")
    assert (ref.path, ref.tag) == ("/srv/layout.tar", "latest")
    assert parse_uri("oci-archive:///srv/a:b/layout.tar").path == "/srv/a:b/layout.tar"
