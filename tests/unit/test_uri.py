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
    "ftp://ubuntu", "docker://", "docker://Ubuntu", "docker://nvcr.io#Nvidia/x", "docker://a#",
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


REGISTRY = "docker://127.0.0.1:5000#"


@pytest.mark.parametrize("uri,why", [
    (REGISTRY + "acc/busybox:bad!tag", "invalid tag 'bad!tag'"),
    (REGISTRY + "acc/busybox:1 ", "trailing whitespace"),
    (REGISTRY + "acc/busybox:1\n", "trailing whitespace"),
    (" " + REGISTRY + "acc/busybox", "unknown scheme"),  # the blank is part of the scheme
    ("docker:// ubuntu", "leading whitespace"),
    ("docker://ubuntu:tag with space", "contains whitespace"),
    ("docker://ubu\x01ntu", "control character"),
    ("docker://", "nothing after docker://"),
    (REGISTRY + "acc/busybox:", "empty tag"),
    (REGISTRY + "acc/busybox:-x", "invalid tag '-x'"),
    (REGISTRY + "acc/busybox:.x", "invalid tag '.x'"),
    (REGISTRY + "acc/busybox:a:b", "invalid tag 'a:b'"),
    (REGISTRY + "acc/busybox:" + "t" * 129, "longer than 128 characters"),
    (REGISTRY + "acc/Busybox", "image names are lower case"),
    ("docker://Ubuntu", "image names are lower case"),
    (REGISTRY + "acc//busybox", "empty part in image name"),
    (REGISTRY + "acc/busybox/", "empty part in image name"),
    (REGISTRY + "acc/bu!sybox", "invalid image name part 'bu!sybox'"),
    (REGISTRY + "acc/-busybox", "invalid image name part '-busybox'"),
    (REGISTRY + ":1", "no image name"),
    ("docker://#repo", "empty registry before '#'"),
    ("docker://a#b#c", "more than one '#'"),
    ("docker://bad_host!#repo", "'bad_host!' is not a registry host"),
    ("docker://127.0.0.1:99999#repo", "'127.0.0.1:99999' is not a registry host"),
    ("docker://ubuntu:22.04/x", "'ubuntu:22.04' is not a registry host"),
    ("docker://@ubuntu", "empty user name"),
    ("docker://a/b@ubuntu", "invalid user name 'a/b'"),
    ("docker://x@y@z", "more than one '@'"),
    ("docker://ubuntu@sha256:abc", "invalid digest 'sha256:abc'"),
    ("docker://ubuntu@sha256:" + "A" * 64, "invalid digest"),
])
def test_errors_name_the_field(uri, why):
    with pytest.raises(UsageError) as info:
        parse_uri(uri)
    assert why in info.value.message, info.value.message
    assert info.value.message.startswith(f"invalid image reference {uri!r}")


@pytest.mark.parametrize("uri,guess,plain_http", [
    ("http://127.0.0.1:5000/acc/busybox:1", "docker://127.0.0.1:5000#acc/busybox:1", True),
    ("HTTP://127.0.0.1:5000/acc/busybox:1", "docker://127.0.0.1:5000#acc/busybox:1", True),
    ("https://nvcr.io/nvidia/pytorch:24.01", "docker://nvcr.io#nvidia/pytorch:24.01", False),
    ("https://registry/acc/busybox", "docker://registry#acc/busybox", False),  # after a scheme: a host
    ("127.0.0.1:5000/acc/busybox:1", "docker://127.0.0.1:5000#acc/busybox:1", True),
    ("nvcr.io/nvidia/pytorch:24.01", "docker://nvcr.io#nvidia/pytorch:24.01", True),
    ("nvidia/cuda:12.0", "docker://nvidia/cuda:12.0", True),  # no dot or colon: a Docker Hub namespace
    ("ubuntu", "docker://ubuntu", True),
])
def test_urls_and_missing_schemes_suggest_the_docker_uri(uri, guess, plain_http):
    with pytest.raises(UsageError) as info:
        parse_uri(uri)
    assert "scheme" in info.value.message
    hint = info.value.hint or ""
    assert hint.startswith(f"did you mean {guess}?"), hint
    assert ("ENROOT_ALLOW_HTTP=yes" in hint) == plain_http, hint
    parse_uri(guess)  # the suggestion itself is valid


@pytest.mark.parametrize("uri", ["ftp://host/image", "http://", "http://host", "NotA URI", "http://h/Bad!"])
def test_no_suggestion_without_a_valid_guess(uri):
    with pytest.raises(UsageError) as info:
        parse_uri(uri)
    assert "accepted forms: docker://" in (info.value.hint or "")


def test_longest_tag_is_accepted():
    assert parse_uri(REGISTRY + "acc/busybox:" + "t" * 128).tag == "t" * 128
