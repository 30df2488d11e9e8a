"""`pyenroot digest` as the unprivileged user against the loopback registry: resolve, platforms, pins, errors."""

import pytest

from pyenroot.devtools import imagebuilder

HTTP = {"ENROOT_ALLOW_HTTP": "y"}


@pytest.fixture(scope="module")
def multiarch(registry, pusher):
    """test/multi:1, an OCI index of amd64 and arm64/v8 images, inside a Docker list (nested)."""
    amd = imagebuilder.build_image([imagebuilder.tar_bytes([imagebuilder.Entry("amd", data=b"a")])], arch="amd64")
    arm = imagebuilder.build_image([imagebuilder.tar_bytes([imagebuilder.Entry("arm", data=b"b")])], arch="arm64",
                                   variant="v8", oci=True, compression="zstd")
    inner = imagebuilder.build_index({("linux", "arm64", "v8"): arm}, oci=True)
    pusher.index("test/multi", "inner", inner, [arm])
    outer = imagebuilder.build_index({("linux", "amd64", None): amd}, oci=False, extra_manifests=[
        inner.descriptor(platform={"os": "linux", "architecture": "arm64", "variant": "v8"})])
    pusher.index("test/multi", "1", outer, [amd])
    return amd, arm


def test_digest_of_a_single_manifest(user, busybox_image):
    result = user.pyenroot("digest", busybox_image.uri, env=HTTP)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == busybox_image.image.digest


def test_plain_http_needs_allow_http(user, busybox_image):
    result = user.pyenroot("digest", busybox_image.uri)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("pyenroot: error: TLS failure talking to 127.0.0.1:")
    assert lines[1] == "hint: the registry may speak plain HTTP: allow it with ENROOT_ALLOW_HTTP=y"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("arch,which", [("x86_64", 0), ("amd64", 0), ("aarch64", 1), ("arm64/v8", 1)])
def test_arch_picks_the_platform_in_nested_indexes(user, multiarch, registry, arch, which):
    result = user.pyenroot("digest", "-a", arch, f"docker://{registry.host}#test/multi:1", env=HTTP)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == multiarch[which].digest


def test_no_matching_platform_lists_the_available_ones(user, multiarch, registry):
    result = user.pyenroot("digest", "--arch", "ppc64le", f"docker://{registry.host}#test/multi:1", env=HTTP)
    assert result.returncode == 1
    assert "no matching platform for linux/ppc64le" in result.stderr
    assert "available: linux/amd64, linux/arm64/v8" in result.stderr


def test_digest_pins(user, busybox_image, registry):
    pinned = f"docker://{registry.host}#test/busybox@{busybox_image.image.digest}"
    result = user.pyenroot("digest", pinned, env=HTTP)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == busybox_image.image.digest
    unknown = f"docker://{registry.host}#test/busybox@sha256:{'0' * 64}"
    result = user.pyenroot("digest", unknown, env=HTTP)
    assert result.returncode == 1 and "not found: test/busybox@sha256:000" in result.stderr


def test_unknown_image_and_tag(user, busybox_image, registry):
    for uri in (f"docker://{registry.host}#test/busybox:nope", f"docker://{registry.host}#test/absent"):
        result = user.pyenroot("digest", uri, env=HTTP)
        assert result.returncode == 1
        assert "pyenroot: error: not found:" in result.stderr and "(registry-not-found)" in result.stderr


def test_invalid_uri_shows_the_grammar(user):
    result = user.pyenroot("digest", "docker://Bad Name")
    assert result.returncode == 2
    assert "invalid image reference" in result.stderr
    assert "docker://[USER@][REGISTRY#]IMAGE[:TAG]" in result.stderr


def test_unreachable_registry(user):
    from pyenroot.devtools.registry import free_port
    uri = f"docker://127.0.0.1:{free_port()}#x/y"
    result = user.pyenroot("digest", uri, env={**HTTP, "ENROOT_TRANSFER_RETRIES": "0"})
    assert result.returncode == 1
    assert "unreachable" in result.stderr and "(registry-unreachable)" in result.stderr


def test_mirror_first_then_origin(user, busybox_image, registry, session_dir):
    from pyenroot.devtools.registry import LocalRegistry, free_port
    mirror = LocalRegistry(session_dir / "registry-mirror").start()
    try:
        pushed = imagebuilder.Pusher(mirror.url)
        only_on_mirror = imagebuilder.build_image([imagebuilder.tar_bytes([imagebuilder.Entry("m", data=b"m")])])
        pushed.image("test/busybox", "mirror-only", only_on_mirror)
        dead = f"127.0.0.1:{free_port()}"
        env = {**HTTP, "ENROOT_TRANSFER_RETRIES": "0",
               "PYENROOT_REGISTRY_MIRRORS": f"{registry.host}={dead},{mirror.host}"}
        # The mirror has this tag: served from there (the origin does not have it).
        result = user.pyenroot("digest", f"docker://{registry.host}#test/busybox:mirror-only", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == only_on_mirror.digest
        # The mirror lacks this one: the origin answers.
        result = user.pyenroot("digest", busybox_image.uri, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == busybox_image.image.digest
    finally:
        mirror.wipe()
