"""The `requests` transport: pooled connections, proxies as requests reads them, our TLS context; used for
blobs, and for every request when a proxy is configured. Its exceptions become the session's TransportErrors.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping

import requests
import urllib3
from requests.adapters import HTTPAdapter

from pyenroot.registry.session import (
    BadURL,
    TLSFailure,
    TransferOptions,
    Unreachable,
    options_context,
    request_headers,
)

# Errors of a body being read (a reset, a truncated chunk, a read timeout).
_BODY_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


class _ContextAdapter(HTTPAdapter):
    """An HTTPS adapter with our own SSLContext: the system CA store plus PYENROOT_CA_BUNDLE."""

    def __init__(self, context: ssl.SSLContext, **kwargs):
        self._context = context
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self._context
        return super().init_poolmanager(*args, **kwargs)


def make_session(options: TransferOptions) -> requests.Session:
    """A session whose pools hold as many connections as we may open at once."""
    session = requests.Session()
    pool = max(10, options.max_connections or 32)
    session.mount("https://", _ContextAdapter(options_context(options), pool_maxsize=pool))
    session.mount("http://", HTTPAdapter(pool_maxsize=pool))
    session.headers.update(request_headers())
    session.proxies.update(dict(options.proxies))  # the environment's own proxies still take precedence
    return session


def _no_auth(request):
    """Explicit "no auth" so that requests does not add ~/.netrc credentials on its own (to any host)."""
    return request


class RequestsResponse:
    def __init__(self, response: requests.Response, streamed: bool):
        self._response = response
        self._streamed = streamed  # else requests has read (and decoded) the body already
        self.status_code = response.status_code
        self.reason = response.reason or ""
        self.url = response.url
        self.headers = response.headers

    def chunks(self, size: int, decode: bool) -> Iterator[bytes]:
        if not self._streamed:
            content = self._response.content
            yield from (content[i:i + size] for i in range(0, len(content), size))
            return
        raw = self._response.raw
        body = raw.stream(size, decode_content=decode) if hasattr(raw, "stream") else self._response.iter_content(size)
        try:
            yield from body
        except _BODY_ERRORS as exc:
            raise Unreachable(str(exc)) from None

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> RequestsResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RequestsTransport:
    def __init__(self, session: requests.Session):
        self.session = session

    def send(self, method: str, url: str, headers: Mapping[str, str], *, stream: bool,
             timeout: tuple[float | None, float]) -> RequestsResponse:
        try:
            response = self.session.request(method, url, headers=dict(headers), stream=stream, allow_redirects=False,
                                            timeout=timeout, auth=_no_auth)
        except requests.exceptions.SSLError as exc:
            raise TLSFailure(str(exc)) from None
        except ValueError as exc:  # requests' InvalidURL/InvalidProxyURL, urllib3's LocationParseError
            raise BadURL(str(exc)) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Unreachable(str(exc)) from None
        return RequestsResponse(response, stream)
