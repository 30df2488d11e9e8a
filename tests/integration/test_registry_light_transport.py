"""The registry client's two transports against the real loopback registry, as the unprivileged user: short
requests (ping, manifests, tokens) go over http.client unless a proxy is configured, then over requests; both
follow the same rules (redirects, logins, errors), so `pyenroot digest` answers the same either way."""

import pytest

from pyenroot import __version__
from pyenroot.devtools.registry import free_port
from tests.helpers.faultproxy import Fault, FaultProxy

HTTP = {"ENROOT_ALLOW_HTTP": "y", "ENROOT_TRANSFER_RETRIES": "0"}
# A proxy that applies to no loopback URL (NO_PROXY): the client then sends everything through requests.
THROUGH_REQUESTS = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}
BOTH = pytest.mark.parametrize("transport", [{}, THROUGH_REQUESTS], ids=["http.client", "requests"])


@pytest.fixture
def proxy(registry):
    server = FaultProxy(registry.url).start()
    yield server
    server.stop()


def encodings(proxy: FaultProxy) -> set[str]:
    """What the requests asked to be compressed with: http.client's transport asks for none."""
    return {headers.get("Accept-Encoding", "") for _, headers in proxy.seen_headers}


def agents(proxy: FaultProxy) -> set[str]:
    return {headers.get("User-Agent", "") for _, headers in proxy.seen_headers}


def test_short_requests_skip_requests_unless_a_proxy_is_configured(user, proxy, busybox_image):
    uri = f"docker://{proxy.host}#{busybox_image.repository}:{busybox_image.tag}"
    result = user.pyenroot("digest", uri, env=HTTP)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == busybox_image.image.digest
    assert encodings(proxy) == {"identity"} and agents(proxy) == {f"pyenroot/{__version__}"}
    proxy.seen_headers.clear()
    result = user.pyenroot("digest", uri, env={**HTTP, **THROUGH_REQUESTS})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == busybox_image.image.digest
    assert "identity" not in encodings(proxy) and agents(proxy) == {f"pyenroot/{__version__}"}  # the same agent


@BOTH
def test_a_manifest_redirect_leaves_the_login_at_home(user, registry, busybox_image, transport):
    storage = FaultProxy(registry.url).start()
    gate = FaultProxy(registry.url, basic_auth=("alice", "secret")).start()
    try:
        gate.add(Fault("redirect", f"/manifests/{busybox_image.tag}", location=f"http://{storage.host}"))
        config = user.make_dir(".config/enroot")
        (config / ".credentials").write_text("machine 127.0.0.1 login alice password secret\n")
        (config / ".credentials").chmod(0o600)
        user.give(config)
        uri = f"docker://{gate.host}#{busybox_image.repository}:{busybox_image.tag}"
        result = user.pyenroot("digest", uri, env={**HTTP, **transport})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == busybox_image.image.digest
        assert gate.count("GET", f"/manifests/{busybox_image.tag}") >= 1
        on_storage = [h for p, h in storage.seen_headers if "/manifests/" in p]
        assert on_storage and not any("Authorization" in h for h in on_storage)
    finally:
        gate.stop()
        storage.stop()


def errors(user, uri: str, env: dict[str, str]) -> list[str]:
    """stderr of `digest URI` over each transport."""
    out = []
    for transport in ({}, THROUGH_REQUESTS):
        result = user.pyenroot("digest", uri, env={**env, **transport})
        assert result.returncode == 1
        out.append(result.stderr)
    return out


def test_errors_read_the_same_over_both_transports(user, registry, proxy, busybox_image):
    light, full = errors(user, f"docker://{registry.host}#test/busybox:nope", HTTP)
    assert light == full and "not found: test/busybox:nope" in light and len(light.splitlines()) <= 2
    light, full = errors(user, f"docker://127.0.0.1:{free_port()}#x/y", HTTP)
    assert light == full and "unreachable" in light and "(registry-unreachable)" in light
    proxy.add(Fault("status", "/manifests/", times=2, status=500))
    light, full = errors(user, f"docker://{proxy.host}#{busybox_image.repository}:{busybox_image.tag}", HTTP)
    assert light == full and "answered 500" in light and "Traceback" not in light
