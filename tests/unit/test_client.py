"""The registry client and RegistrySource against an in-process fake registry (a requests transport adapter).

No network: a handler function answers every request; tests look at what was sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import requests
import urllib3
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from pyenroot.config import Settings
from pyenroot.content.model import Descriptor
from pyenroot.errors import ConfigError, ImageError, RegistryError
from pyenroot.registry import manifest as m
from pyenroot.registry.client import retry_delay
from pyenroot.registry.endpoints import Endpoint, parse_mirrors
from pyenroot.registry.session import Transports
from pyenroot.registry.source import RegistrySource
from pyenroot.registry.uri import parse_uri


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    fail_after: int | None = None  # raise a connection error after this many body bytes


class _Raw:
    def __init__(self, reply: Reply):
        self.data, self.fail_after, self.position = reply.body, reply.fail_after, 0

    def read(self, amount=None, **_):
        if self.fail_after is not None and self.position >= self.fail_after:
            raise requests.exceptions.ChunkedEncodingError("Connection reset by peer")
        end = len(self.data) if amount is None else self.position + amount
        if self.fail_after is not None:
            end = min(end, self.fail_after)
        chunk = self.data[self.position:end]
        self.position += len(chunk)
        return chunk

    def stream(self, amount, decode_content=None):
        while True:
            try:
                chunk = self.read(amount)
            except requests.exceptions.ChunkedEncodingError as exc:
                raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead") from exc
            if not chunk:
                return
            yield chunk

    def close(self):
        pass


class FakeTransport(BaseAdapter):
    """Turns a handler function into a transport; records every request."""

    def __init__(self, handler: Callable[[requests.PreparedRequest], Reply | Exception]):
        super().__init__()
        self.handler = handler
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        self.sent.append(request)
        reply = self.handler(request)
        if isinstance(reply, Exception):
            raise reply
        response = requests.Response()
        response.status_code = reply.status
        response.reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(reply.status, "")
        response.headers = CaseInsensitiveDict(reply.headers)
        response.raw = _Raw(reply)
        response.url = request.url
        response.request = request
        return response

    def close(self):
        pass

    def paths(self, method: str = "GET") -> list[str]:
        return [r.path_url for r in self.sent if r.method == method]


class FakeRegistry:
    """A tiny v2 registry: manifests by reference, blobs by digest, optional auth and faults."""

    def __init__(self, host="reg.test", repository="team/app"):
        self.host, self.repository = host, repository
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}
        self.auth: str | None = None  # None, "basic" or "bearer"
        self.faults: list[Callable[[requests.PreparedRequest], Reply | Exception | None]] = []
        self.token = "tok-123"
        self.ranges = True  # honour Range requests

    def add_image(self, tag: str, layers: list[bytes], arch: str = "amd64", media_type=m.OCI_MANIFEST) -> str:
        config = json.dumps({"architecture": arch, "os": "linux", "config": {"Env": ["A=1"]}}).encode()
        self.blobs[sha(config)] = config
        for layer in layers:
            self.blobs[sha(layer)] = layer
        document = {"schemaVersion": 2, "mediaType": media_type,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                               "size": len(config)},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(b),
                                "size": len(b)} for b in layers]}
        body = json.dumps(document).encode()
        self.manifests[tag] = self.manifests[sha(body)] = (media_type, body)
        return sha(body)

    def add_index(self, tag: str, entries: dict[str, str]) -> str:
        manifests = [{"mediaType": m.OCI_MANIFEST, "digest": d, "size": len(self.manifests[d][1]),
                      "platform": {"os": "linux", "architecture": arch}} for arch, d in entries.items()]
        body = json.dumps({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": manifests}).encode()
        self.manifests[tag] = self.manifests[sha(body)] = (m.OCI_INDEX, body)
        return sha(body)

    def _authorized(self, request) -> bool:
        header = request.headers.get("Authorization", "")
        if self.auth == "basic":
            return header == "Basic " + base64.b64encode(b"alice:pw").decode()
        if self.auth == "bearer":
            return header == f"Bearer {self.token}"
        return True

    def __call__(self, request: requests.PreparedRequest) -> Reply | Exception:
        for fault in self.faults:
            reply = fault(request)
            if reply is not None:
                return reply
        url = requests.utils.urlparse(request.url)
        if url.hostname == "auth.test":
            return self._token(request)
        if url.netloc != self.host:
            return requests.ConnectionError(f"cannot reach {url.netloc}")
        if not self._authorized(request):
            challenge = ('Basic realm="fake"' if self.auth == "basic" else
                         f'Bearer realm="https://auth.test/token",service="fake",'
                         f'scope="repository:{self.repository}:pull"')
            return Reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
        path = url.path
        if path == "/v2/":
            return Reply(200, b"{}")
        prefix = f"/v2/{self.repository}/"
        if path.startswith(prefix + "manifests/"):
            found = self.manifests.get(path[len(prefix + "manifests/"):])
            if found:
                return Reply(200, found[1], {"Content-Type": found[0]})
            return Reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
        if path.startswith(prefix + "blobs/"):
            blob = self.blobs.get(path[len(prefix + "blobs/"):])
            if blob is None:
                return Reply(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            wanted = request.headers.get("Range", "")
            if wanted.startswith("bytes=") and self.ranges:
                start = int(wanted[6:].rstrip("-"))
                return Reply(206, blob[start:], {"Content-Range": f"bytes {start}-{len(blob) - 1}/{len(blob)}"})
            return Reply(200, blob)
        return Reply(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')

    def _token(self, request) -> Reply:
        query = requests.utils.urlparse(request.url).query
        expected = "Basic " + base64.b64encode(b"alice:pw").decode()
        if request.headers.get("Authorization") != expected:
            return Reply(401, b"{}")
        assert "service=fake" in query and "scope=repository%3Ateam%2Fapp%3Apull" in query
        return Reply(200, json.dumps({"token": self.token}).encode())


@pytest.fixture
def fake():
    return FakeRegistry()


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "config").mkdir()
    return Settings({"ENROOT_CACHE_PATH": str(tmp_path / "cache"), "ENROOT_CONFIG_PATH": str(tmp_path / "config"),
                     "ENROOT_TRANSFER_RETRIES": "3", "ENROOT_MAX_CONNECTIONS": "4", "ENROOT_CONNECT_TIMEOUT": "30",
                     "ENROOT_TRANSFER_TIMEOUT": "0"})


def source_for(fake, settings, uri="docker://reg.test#team/app:1", environ=None, **changes):
    transport = FakeTransport(fake)
    session = requests.Session()
    session.mount("http://", transport)
    session.mount("https://", transport)
    sleeps: list[float] = []
    src = RegistrySource(parse_uri(uri), settings.overridden(**changes), session, environ=environ or {},
                         sleep=sleeps.append)
    return src, transport, sleeps


def write_credentials(settings, text="machine reg.test login alice password pw\n"):
    path = settings.path("ENROOT_CONFIG_PATH") / ".credentials"
    path.write_text(text)
    path.chmod(0o600)


def test_resolve_and_fetch_anonymously(fake, settings):
    digest = fake.add_image("1", [b"layer-one", b"layer-two"])
    src, transport, _ = source_for(fake, settings)
    image = src.resolve("x86_64")
    assert image.manifest_digest == digest
    assert image.config["config"]["Env"] == ["A=1"]
    assert image.source_uri == "docker://reg.test#team/app:1"
    layers = src.fetch_layers(image)
    assert [layer.path.read_bytes() for layer in layers] == [b"layer-one", b"layer-two"]
    assert all("Authorization" not in r.headers for r in transport.sent)
    assert transport.sent[0].url == "https://reg.test/v2/team/app/manifests/1"  # no ping: only HTTPS is allowed


def test_cached_blobs_make_no_request(fake, settings):
    fake.add_image("1", [b"layer-one"])
    src, _, _ = source_for(fake, settings)
    src.fetch_layers(src.resolve("amd64"))
    again, transport, _ = source_for(fake, settings)
    again.fetch_layers(again.resolve("amd64"))
    assert not [p for p in transport.paths() if "/blobs/" in p]


def test_index_selects_the_platform_and_verifies_each_manifest(fake, settings):
    amd = fake.add_image("amd", [b"amd-layer"], arch="amd64")
    arm = fake.add_image("arm", [b"arm-layer"], arch="arm64")
    fake.add_index("1", {"amd64": amd, "arm64": arm})
    src, _, _ = source_for(fake, settings)
    assert src.manifest_digest("aarch64") == arm
    assert src.manifest_digest("amd64") == amd
    with pytest.raises(ImageError, match="no matching platform for linux/ppc64le") as info:
        src.manifest_digest("ppc64le")
    assert "linux/amd64, linux/arm64" in info.value.hint
    media_type, body = fake.manifests[arm]
    fake.manifests[arm] = (media_type, body + b" ")  # tampered child manifest
    with pytest.raises(ImageError, match=f"digest mismatch for manifest {arm}"):
        src.manifest_digest("arm64")


def test_digest_in_the_uri_is_verified(fake, settings):
    digest = fake.add_image("1", [b"x"])
    src, _, _ = source_for(fake, settings, uri=f"docker://reg.test#team/app@{digest}")
    assert src.manifest_digest(None) == digest
    media_type, body = fake.manifests[digest]
    fake.manifests[digest] = (media_type, body.replace(b'"layers"', b'"layers" '))
    with pytest.raises(ImageError, match="digest mismatch for manifest"):
        src.manifest_digest(None)


def test_bearer_token_with_credentials(fake, settings):
    fake.auth = "bearer"
    fake.add_image("1", [b"secret-layer"])
    write_credentials(settings)
    src, transport, _ = source_for(fake, settings)
    src.fetch_layers(src.resolve(None))
    token_requests = [r for r in transport.sent if r.url.startswith("https://auth.test/")]
    assert len(token_requests) == 1  # one token for the whole pull
    blob_requests = [r for r in transport.sent if "/blobs/" in r.url]
    assert all(r.headers["Authorization"] == "Bearer tok-123" for r in blob_requests)


def test_bearer_token_refused_without_credentials(fake, settings):
    fake.auth = "bearer"
    fake.add_image("1", [b"x"])
    src, _, _ = source_for(fake, settings)
    with pytest.raises(RegistryError, match=r"access denied to reg.test/team/app: anonymous access refused") as info:
        src.resolve(None)
    assert ".credentials" in info.value.hint and info.value.reference == "registry-denied"


def test_basic_auth(fake, settings):
    fake.auth = "basic"
    fake.add_image("1", [b"x"])
    src, _, _ = source_for(fake, settings)
    with pytest.raises(RegistryError, match="access denied"):
        src.resolve(None)
    write_credentials(settings)
    src, transport, _ = source_for(fake, settings)
    assert src.resolve(None).layers
    # Anonymous until the registry's Basic challenge; from then on every request carries alice's password.
    expected = "Basic " + base64.b64encode(b"alice:pw").decode()
    headers = [(r.path_url, r.headers.get("Authorization")) for r in transport.sent]
    assert headers[0] == ("/v2/team/app/manifests/1", None)
    assert headers[1:] and all(header == expected for _, header in headers[1:])
    assert headers[1][0] == "/v2/team/app/manifests/1"


def test_user_in_uri_without_password(fake, settings):
    fake.auth = "basic"
    fake.add_image("1", [b"x"])
    write_credentials(settings)
    src, _, _ = source_for(fake, settings, uri="docker://bob@reg.test#team/app:1")
    with pytest.raises(RegistryError, match=r"no password for bob at reg.test"):
        src.resolve(None)


def test_redirect_to_another_host_drops_authorization(fake, settings):
    fake.auth = "basic"
    layer = b"redirected-layer"
    fake.add_image("1", [layer])
    write_credentials(settings)

    def redirect(request):
        url = request.url
        if url.startswith("https://reg.test/v2/team/app/blobs/") and sha(layer) in url and fake._authorized(request):
            return Reply(307, headers={"Location": f"https://cdn.test/data?sig=1&d={sha(layer)}"})
        if url.startswith("https://cdn.test/"):
            if "Authorization" in request.headers:
                return Reply(400, b"leaked credentials")
            return Reply(200, layer)
        return None

    fake.faults.append(redirect)
    src, transport, _ = source_for(fake, settings)
    src.fetch_layers(src.resolve(None))
    cdn = [r for r in transport.sent if r.url.startswith("https://cdn.test/")]
    assert len(cdn) == 1 and "Authorization" not in cdn[0].headers


def test_same_host_redirect_keeps_authorization(fake, settings):
    fake.auth = "basic"
    fake.add_image("1", [b"x"])
    write_credentials(settings)

    def redirect(request):
        if request.url == "https://reg.test/v2/team/app/manifests/old":
            return Reply(301, headers={"Location": "/v2/team/app/manifests/1"})
        return None

    fake.faults.append(redirect)
    src, _, _ = source_for(fake, settings, uri="docker://reg.test#team/app:old")
    assert src.resolve(None).layers


def flaky(pattern: str, replies: list[Reply | Exception]):
    """A fault that answers the first requests matching `pattern` with `replies`, then lets them through."""
    pending = list(replies)

    def fault(request):
        if pattern in request.url and pending:
            return pending.pop(0)
        return None

    return fault


def test_503_and_429_are_retried_with_retry_after(fake, settings):
    fake.add_image("1", [b"layer"])
    fake.faults.append(flaky("/manifests/", [Reply(503), Reply(429, headers={"Retry-After": "7"})]))
    src, _, sleeps = source_for(fake, settings)
    assert src.resolve(None).layers
    assert sleeps == [0.5, 7.0]


def test_connection_errors_are_retried_then_reported(fake, settings):
    fake.add_image("1", [b"layer"])
    fake.faults.append(flaky("/manifests/", [requests.ConnectionError("boom")]))
    src, _, sleeps = source_for(fake, settings)
    assert src.resolve(None).layers and sleeps == [0.5]
    src, _, sleeps = source_for(fake, settings, uri="docker://down.test#team/app:1")
    with pytest.raises(RegistryError, match=r"registry down.test unreachable") as info:
        src.resolve(None)
    assert info.value.reference == "registry-unreachable"
    assert sleeps == [0.5, 1.0, 2.0]


def test_retries_exhausted(fake, settings):
    fake.add_image("1", [b"layer"])
    fake.faults.append(flaky("/manifests/", [Reply(503)] * 10))
    src, _, _ = source_for(fake, settings, ENROOT_TRANSFER_RETRIES="1")
    with pytest.raises(RegistryError, match=r"reg.test answered 503 Service Unavailable"):
        src.resolve(None)


def test_not_found(fake, settings):
    fake.add_image("1", [b"layer"])
    src, _, _ = source_for(fake, settings, uri="docker://reg.test#team/app:nope")
    with pytest.raises(RegistryError, match=r"not found: team/app:nope on reg.test") as info:
        src.resolve(None)
    assert info.value.reference == "registry-not-found"


@pytest.mark.parametrize("ranges", [True, False])
def test_interrupted_blob_is_resumed(fake, settings, ranges):
    layer = b"0123456789" * 1000
    fake.ranges = ranges
    fake.add_image("1", [layer])
    fake.faults.append(flaky("/blobs/" + sha(layer), [Reply(200, layer, fail_after=100),
                                                      requests.ConnectionError("refused")]))
    src, transport, sleeps = source_for(fake, settings)
    layers = src.fetch_layers(src.resolve(None))
    assert layers[0].path.read_bytes() == layer and sleeps == [0.5, 0.5]  # resume, then a connection retry
    blob_requests = [r for r in transport.sent if sha(layer) in r.url]
    assert [r.headers.get("Range") for r in blob_requests] == [None, "bytes=100-", "bytes=100-"]


def test_interrupted_blob_gives_up_after_the_retries(fake, settings):
    layer = b"0123456789" * 1000
    fake.add_image("1", [layer])
    fake.faults.append(flaky("/blobs/" + sha(layer), [Reply(200, layer, fail_after=100)] * 3))
    src, _, _ = source_for(fake, settings, ENROOT_TRANSFER_RETRIES="2")
    image = src.resolve(None)
    with pytest.raises(RegistryError, match=r"download of blob .* interrupted: incompleteRead"):
        src.fetch_layers(image)
    assert not src.cache.has(sha(layer)) and not list(src.cache.blobs.glob(".*"))


def test_corrupted_blob_fails_and_caches_nothing(fake, settings):
    layer = b"precious bytes"
    fake.add_image("1", [layer])
    fake.faults.append(flaky("/blobs/" + sha(layer), [Reply(200, b"Precious bytes")]))
    src, _, _ = source_for(fake, settings)
    image = src.resolve(None)
    with pytest.raises(ImageError, match=f"digest mismatch for blob {sha(layer)}"):
        src.fetch_layers(image)
    assert not src.cache.has(sha(layer))
    assert len(src.cache.digests()) == 1  # the config only
    assert not list(src.cache.blobs.glob('.*'))  # no temp file left


def test_plain_http_only_when_allowed(fake, settings):
    fake.add_image("1", [b"layer"])
    fake.faults.append(lambda r: requests.exceptions.SSLError("wrong version number")
                       if r.url.startswith("https://") else None)
    src, _, _ = source_for(fake, settings)
    with pytest.raises(RegistryError, match=r"TLS failure talking to reg.test: wrong version number") as info:
        src.resolve(None)
    assert "ENROOT_ALLOW_HTTP=y" in info.value.hint
    src, transport, _ = source_for(fake, settings, ENROOT_ALLOW_HTTP="y")
    assert src.resolve(None).layers
    assert transport.sent[-1].url.startswith("http://reg.test/")


def test_the_ping_only_chooses_between_https_and_http(fake, settings, monkeypatch):
    """HTTPS only, or plain HTTP on a port without TLS: the first request is the manifest's. The ping (GET /v2/)
    is sent only where both schemes are possible."""
    fake.add_image("1", [b"layer"])
    src, transport, _ = source_for(fake, settings)
    src.resolve(None)
    assert transport.sent[0].url == "https://reg.test/v2/team/app/manifests/1"
    monkeypatch.setattr(Transports, "speaks_tls", lambda self, netloc, timeout: False)
    src, transport, _ = source_for(fake, settings, ENROOT_ALLOW_HTTP="y")
    src.resolve(None)
    assert transport.sent[0].url == "http://reg.test/v2/team/app/manifests/1"
    monkeypatch.setattr(Transports, "speaks_tls", lambda self, netloc, timeout: True)
    src, transport, _ = source_for(fake, settings, ENROOT_ALLOW_HTTP="y")
    src.resolve(None)
    assert transport.sent[0].url == "https://reg.test/v2/"


def test_mirrors_are_tried_in_order_then_the_origin(fake, settings):
    layer = b"mirrored"
    fake.add_image("1", [layer])
    mirror = FakeRegistry(host="mirror.test", repository="cache/team/app")
    mirror.add_image("1", [layer])
    del mirror.blobs[sha(layer)]  # the mirror has the manifest but lost a blob

    def route(request):
        netloc = requests.utils.urlparse(request.url).netloc
        if netloc == "mirror.test":
            return mirror(request)
        return fake(request)

    transport = FakeTransport(route)
    session = requests.Session()
    session.mount("https://", transport)
    changed = settings.overridden(PYENROOT_REGISTRY_MIRRORS="reg.test=down.test,mirror.test/cache")
    src = RegistrySource(parse_uri("docker://reg.test#team/app:1"), changed, session, environ={}, sleep=lambda s: None)
    image = src.resolve(None)
    assert src.clients[0].host == "mirror.test"
    assert src.fetch_layers(image)[0].path.read_bytes() == layer
    hosts = [requests.utils.urlparse(r.url).netloc for r in transport.sent if "/blobs/" + sha(layer) in r.url]
    # The mirror that lost the blob, then the one that is down (its retries), then the origin.
    assert list(dict.fromkeys(hosts)) == ["mirror.test", "down.test", "reg.test"] and hosts[-1] == "reg.test"


def test_parse_mirrors():
    assert parse_mirrors("docker.io=mirror.local:5000, http://m2/prefix/ ; nvcr.io=n.local") == {
        "registry-1.docker.io": [Endpoint("mirror.local:5000"), Endpoint("m2", "http", "prefix")],
        "nvcr.io": [Endpoint("n.local")],
    }
    assert parse_mirrors(None) == {}
    for bad in ("nvcr.io", "=x", "a=ftp://b"):
        with pytest.raises(ConfigError):
            parse_mirrors(bad)


def test_retry_delay():
    response = requests.Response()
    response.headers = CaseInsensitiveDict({"Retry-After": "3"})
    assert retry_delay(response, 0) == 3.0
    response.headers["Retry-After"] = "100000"
    assert retry_delay(response, 0) == 120.0
    response.headers["Retry-After"] = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_delay(response, 0) == 0.0
    assert [retry_delay(None, n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_blob_stream_verifies_at_the_end(fake, settings):
    layer = b"streamed"
    fake.add_image("1", [layer])
    src, _, _ = source_for(fake, settings)
    descriptor = Descriptor("application/vnd.oci.image.layer.v1.tar", sha(layer), len(layer))
    assert b"".join(src.blob_stream(descriptor)) == layer
    fake.blobs[sha(layer)] = b"tampered"
    with pytest.raises(ImageError, match="digest mismatch"):
        b"".join(src.blob_stream(descriptor))


def test_parallel_downloads_are_bounded_by_max_connections(fake, settings, monkeypatch):
    import concurrent.futures  # (the source imports its pool only when it downloads)

    workers: list[int] = []
    real = concurrent.futures.ThreadPoolExecutor

    def recording(max_workers, **kwargs):
        workers.append(max_workers)
        return real(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", recording)
    fake.add_image("1", [f"layer {n}".encode() for n in range(6)])
    src, _, _ = source_for(fake, settings, ENROOT_MAX_CONNECTIONS="2")
    assert len(src.fetch_layers(src.resolve(None))) == 6
    src, _, _ = source_for(fake, settings.overridden(ENROOT_CACHE_PATH=settings.get("ENROOT_CACHE_PATH") + "2"),
                           ENROOT_MAX_CONNECTIONS="0")
    src.fetch_layers(src.resolve(None))
    assert workers == [2, 6]  # 0 = one connection per missing blob


def test_timeouts_come_from_the_settings(fake, settings):
    fake.add_image("1", [b"x"])
    seen = []
    src, transport, _ = source_for(fake, settings, ENROOT_CONNECT_TIMEOUT="7", ENROOT_TRANSFER_TIMEOUT="40")
    original = transport.send
    transport.send = lambda request, **kw: seen.append(kw["timeout"]) or original(request, **kw)
    src.resolve(None)
    assert set(seen) == {(7.0, 40.0)}


def test_no_netrc_from_requests_itself(fake, settings, tmp_path, monkeypatch):
    """requests would add ~/.netrc logins to any host; only our credential files may be used."""
    (tmp_path / ".netrc").write_text("machine reg.test login mallory password leaked\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    fake.add_image("1", [b"x"])
    src, transport, _ = source_for(fake, settings)
    src.fetch_layers(src.resolve(None))
    assert all("Authorization" not in r.headers for r in transport.sent)


def test_transfer_options_from_settings():
    from pyenroot.registry.session import TransferOptions

    options = TransferOptions.from_settings(Settings({
        "ENROOT_ALLOW_HTTP": "yes", "ENROOT_CONNECT_TIMEOUT": "0", "ENROOT_TRANSFER_TIMEOUT": "0",
        "ENROOT_TRANSFER_RETRIES": "2", "ENROOT_MAX_CONNECTIONS": "0", "https_proxy": "http://proxy:3128",
        "no_proxy": "localhost"}))
    assert options.allow_http and options.connect_timeout is None and options.transfer_timeout is None
    assert options.request_timeout == (None, 300.0)  # a stalled connection still ends
    assert (options.retries, options.max_connections) == (2, 0)
    assert dict(options.proxies) == {"https": "http://proxy:3128", "no_proxy": "localhost"}


def test_https_refused_falls_back_to_http_at_once_when_allowed(fake, settings):
    fake.add_image("1", [b"layer"])
    fake.faults.append(lambda r: requests.ConnectionError("refused") if r.url.startswith("https://") else None)
    src, transport, sleeps = source_for(fake, settings, ENROOT_ALLOW_HTTP="y")
    assert src.resolve(None).layers
    assert sleeps == [] and [r.url.split(":")[0] for r in transport.sent][:2] == ["https", "http"]


def leave_partial(src, digest: str, data: bytes, name: str = "killed1") -> None:
    """What a killed download leaves: a temp file next to where the blob would go."""
    src.cache.blobs.mkdir(parents=True, exist_ok=True)
    (src.cache.blobs / f".{digest[7:]}.{name}.part").write_bytes(data)


def blob_ranges(transport, digest):
    return [r.headers.get("Range") for r in transport.sent if digest in r.url]


def test_a_killed_download_is_resumed_from_its_temp_file(fake, settings):
    layer = bytes(range(256)) * 100
    fake.add_image("1", [layer])
    src, transport, _ = source_for(fake, settings)
    image = src.resolve(None)
    leave_partial(src, sha(layer), layer[:1000])
    leave_partial(src, sha(layer), layer[:10], name="killed2")  # the shorter leftover is dropped
    assert src.fetch_layers(image)[0].path.read_bytes() == layer
    assert blob_ranges(transport, sha(layer)) == ["bytes=1000-"]
    assert not list(src.cache.blobs.glob(".*"))


def test_a_bad_leftover_is_dropped_and_the_blob_fetched_again(fake, settings):
    layer = bytes(range(256)) * 100
    fake.add_image("1", [layer])
    src, transport, _ = source_for(fake, settings)
    image = src.resolve(None)
    leave_partial(src, sha(layer), b"garbage" * 10)
    assert src.fetch_layers(image)[0].path.read_bytes() == layer
    assert blob_ranges(transport, sha(layer)) == ["bytes=70-", None]


def test_a_complete_leftover_needs_no_request(fake, settings):
    layer = b"complete but never renamed"
    fake.add_image("1", [layer])
    src, transport, _ = source_for(fake, settings)
    image = src.resolve(None)
    leave_partial(src, sha(layer), layer)
    assert src.fetch_layers(image)[0].path.read_bytes() == layer
    assert blob_ranges(transport, sha(layer)) == []


def test_oversized_manifests_and_configs_are_refused(fake, settings, monkeypatch):
    import pyenroot.registry.client as client_module
    import pyenroot.registry.source as source_module

    fake.add_image("1", [b"x"])
    monkeypatch.setattr(client_module, "MAX_MANIFEST", 100)
    src, _, _ = source_for(fake, settings)
    with pytest.raises(RegistryError, match="sent more than 100 bytes"):
        src.resolve(None)
    monkeypatch.undo()
    monkeypatch.setattr(source_module, "MAX_CONFIG", 10)
    src, _, _ = source_for(fake, settings)
    with pytest.raises(ImageError, match="more than the 10 accepted"):
        src.resolve(None)


def test_short_requests_use_http_client_unless_a_proxy_is_configured():
    from pyenroot.registry.session import TransferOptions, transports_for
    from pyenroot.registry.transport_requests import RequestsTransport
    from pyenroot.registry.transport_stdlib import StdlibTransport

    plain = TransferOptions()
    assert isinstance(transports_for(plain, environ={}).metadata, StdlibTransport)
    assert isinstance(transports_for(plain, environ={}).blobs, RequestsTransport)
    for environ in ({"HTTPS_PROXY": "http://p:3128"}, {"all_proxy": "socks5://p"}, {"REQUESTS_CA_BUNDLE": "/ca"}):
        assert isinstance(transports_for(plain, environ=environ).metadata, RequestsTransport), environ
    from_settings = TransferOptions(proxies=(("https", "http://p:3128"),))
    assert isinstance(transports_for(from_settings, environ={}).metadata, RequestsTransport)
    injected = transports_for(plain, requests.Session(), environ={})
    assert injected.metadata is injected.blobs
