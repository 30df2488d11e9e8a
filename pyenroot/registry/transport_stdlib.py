"""A small transport on `http.client` for the registry's short requests (the `/v2/` ping, manifests, tokens),
so that finding an image already built costs no `requests` import (a TLS context is made only for https).

It knows no proxies: the session uses it only when none is configured (`session.needs_full_transport`).
Keeps one connection per scheme and host; a connection the server closed while idle is reopened once.
"""

from __future__ import annotations

import http.client
import zlib
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

from pyenroot.registry.session import (
    BadURL,
    TLSFailure,
    TransferOptions,
    TransportError,
    Unreachable,
    default_bundle,
    options_context,
    request_headers,
)

TYPE_CHECKING = False

if TYPE_CHECKING:
    import ssl

DRAIN_LIMIT = 64 << 10  # an unread body up to this size is read to keep its connection; a longer one closes it
# An idle connection the server dropped shows as one of these on the next request.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def _failure(scheme: str, exc: BaseException) -> TransportError:
    if scheme == "https":
        import ssl

        if isinstance(exc, ssl.SSLError):
            return TLSFailure(str(exc))
    return Unreachable(str(exc) or type(exc).__name__)


class StdlibResponse:
    def __init__(self, response: http.client.HTTPResponse, connection: http.client.HTTPConnection, url: str,
                 scheme: str):
        self._response = response
        self._connection = connection
        self._scheme = scheme
        self.status_code = response.status
        self.reason = response.reason or ""
        self.url = url
        self.headers = response.headers  # an email.message.Message: `get` is case-insensitive

    def chunks(self, size: int, decode: bool) -> Iterator[bytes]:
        encoding = (self.headers.get("Content-Encoding") or "").strip().lower() if decode else ""
        # We ask for identity; a server that compresses anyway is undone as requests would (gzip or deflate).
        decompressor = zlib.decompressobj(47) if encoding in ("gzip", "deflate") else None
        try:
            while chunk := self._response.read(size):
                yield decompressor.decompress(chunk) if decompressor else chunk
            if decompressor:
                yield decompressor.flush()
        except (OSError, http.client.HTTPException, zlib.error) as exc:
            self._connection.close()
            raise _failure(self._scheme, exc) from None

    def close(self) -> None:
        if self._response.isclosed():
            return
        try:
            length = self._response.length
            if length is not None and length <= DRAIN_LIMIT:
                self._response.read()  # the connection stays usable for the next request
            else:
                self._connection.close()
        except (OSError, http.client.HTTPException):
            self._connection.close()
        self._response.close()

    def __enter__(self) -> StdlibResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StdlibTransport:
    def __init__(self, options: TransferOptions):
        self._options = options
        self._context: ssl.SSLContext | None = None
        self._connections: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def _ssl_context(self) -> ssl.SSLContext:
        if self._context is None:
            context = options_context(self._options)
            bundle = default_bundle()
            if bundle:
                context.load_verify_locations(cafile=bundle)
            self._context = context
        return self._context

    def _connection(self, scheme: str, netloc: str, connect_timeout: float | None) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        connection = self._connections.get(key)
        if connection is None:
            try:
                host, port = urlsplit(f"//{netloc}").hostname, urlsplit(f"//{netloc}").port
            except ValueError as exc:
                raise BadURL(str(exc)) from None
            if not host:
                raise BadURL(f"no host in {netloc!r}")
            if scheme == "https":
                connection = http.client.HTTPSConnection(host, port, timeout=connect_timeout,
                                                         context=self._ssl_context())
            else:
                connection = http.client.HTTPConnection(host, port, timeout=connect_timeout)
            self._connections[key] = connection
        return connection

    def send(self, method: str, url: str, headers: Mapping[str, str], *, stream: bool,
             timeout: tuple[float | None, float]) -> StdlibResponse:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise BadURL(f"unsupported URL scheme {parts.scheme!r} in {url}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {**request_headers(), "Accept-Encoding": "identity", **headers}
        for attempt in (0, 1):
            connection = self._connection(parts.scheme, parts.netloc, timeout[0])
            reused = connection.sock is not None
            try:
                connection.request(method, target, headers=sent)
                if connection.sock is not None:
                    connection.sock.settimeout(timeout[1])  # connected: from now on the read timeout
                response = connection.getresponse()
            except _STALE as exc:
                connection.close()
                if reused and attempt == 0:
                    continue
                raise _failure(parts.scheme, exc) from None
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                raise _failure(parts.scheme, exc) from None
            return StdlibResponse(response, connection, url, parts.scheme)
        raise AssertionError("unreachable")
