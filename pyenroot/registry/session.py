"""What registry requests run over: transfer options read from the settings (timeouts, retries, connections,
proxies, certificates), the TLS context (system CAs plus PYENROOT_CA_BUNDLE), and the one small `Transport`
interface the registry client sends through, with the rules both transports share.

Two transports: `transport_requests` (pooled, proxies; blobs and everything else) and `transport_stdlib`
(`http.client`, for the few short requests that find an image already built: a Slurm step does not import
`requests` for them). Redirects, auth, retries and error wording live once, in the client, above both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

from pyenroot.config import Settings
from pyenroot.errors import ConfigError
from pyenroot.record import record

TYPE_CHECKING = False  # typing's flag without importing typing

if TYPE_CHECKING:
    import ssl
    from typing import Protocol

    import requests
else:
    Protocol = object

# With ENROOT_TRANSFER_TIMEOUT=0 (no limit on a whole transfer) a connection that sends nothing for this
# long is still considered dead, so that a stalled server cannot hang an import forever.
STALL_TIMEOUT = 300.0


# Proxy settings -> keys of requests' `proxies` mapping.
_PROXY_SETTINGS = {"http_proxy": "http", "https_proxy": "https", "all_proxy": "all", "no_proxy": "no_proxy"}


@record(frozen=True)
class TransferOptions:
    allow_http: bool = False
    connect_timeout: float | None = 30.0
    transfer_timeout: float | None = None  # whole transfer; None = unlimited
    retries: int = 3
    ca_bundle: str | None = None
    max_connections: int = 10  # 0 = unlimited
    # SSL_CERT_FILE / SSL_CERT_DIR and proxies may come from enroot.conf, not only from the environment.
    ssl_cert_file: str | None = None
    ssl_cert_dir: str | None = None
    proxies: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> TransferOptions:
        connect = settings.integer("ENROOT_CONNECT_TIMEOUT")
        transfer = settings.integer("ENROOT_TRANSFER_TIMEOUT")
        return cls(
            allow_http=settings.flag("ENROOT_ALLOW_HTTP"),
            connect_timeout=float(connect) if connect > 0 else None,
            transfer_timeout=float(transfer) if transfer > 0 else None,
            retries=max(0, settings.integer("ENROOT_TRANSFER_RETRIES")),
            ca_bundle=_readable_bundle(settings.get("PYENROOT_CA_BUNDLE") or None),
            max_connections=max(0, settings.integer("ENROOT_MAX_CONNECTIONS")),
            ssl_cert_file=settings.get("SSL_CERT_FILE") or None,
            ssl_cert_dir=settings.get("SSL_CERT_DIR") or None,
            proxies=tuple((name, value) for key, name in _PROXY_SETTINGS.items() if (value := settings.get(key))),
        )

    @property
    def request_timeout(self) -> tuple[float | None, float]:
        return (self.connect_timeout, self.transfer_timeout or STALL_TIMEOUT)


# ---- the transport interface -------------------------------------------------------------------------------


class TransportError(Exception):
    """A request that got no HTTP answer; the text is the lower layer's, for `client._reason` to shorten."""


class TLSFailure(TransportError):
    """The TLS handshake or the certificate check failed."""


class Unreachable(TransportError):
    """No connection, a timeout, or a connection lost mid-answer (retryable)."""


class BadURL(TransportError):
    """A URL (a registry, a redirect, a proxy) that cannot be requested."""


class Response(Protocol):
    """An answer: status, headers (case-insensitive `get`), the final URL; the body read by `chunks`."""

    status_code: int
    reason: str
    url: str
    headers: Mapping[str, str]

    def chunks(self, size: int, decode: bool) -> Iterator[bytes]:
        """The body; `decode` undoes a Content-Encoding. Raises Unreachable when the connection breaks."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Response: ...

    def __exit__(self, *exc: object) -> None: ...


class Transport(Protocol):
    """Sends one request, never following redirects and adding no credentials of its own (no ~/.netrc)."""

    def send(self, method: str, url: str, headers: Mapping[str, str], *, stream: bool,
             timeout: tuple[float | None, float]) -> Response: ...


# ---- rules both transports follow ---------------------------------------------------------------------------

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
# requests reads these for its CA bundle (trust_env); the light transport would not.
_REQUESTS_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def needs_full_transport(options: TransferOptions, environ: Mapping[str, str]) -> bool:
    """Whether even short requests must go through `requests`: a proxy is configured (settings or environment;
    which URLs it applies to, NO_PROXY included, is then requests' decision alone) or requests' own CA variables
    are set. Otherwise no proxy applies to any URL, and both transports send alike."""
    if any(name != "no_proxy" for name, _ in options.proxies):
        return True
    names = (*_PROXY_VARIABLES, *(n.upper() for n in _PROXY_VARIABLES), *_REQUESTS_CA_VARIABLES)
    return any(environ.get(name) for name in names)


def request_headers() -> dict[str, str]:
    """What every request carries, whichever transport sends it (the client adds Accept and Authorization)."""
    from pyenroot import __version__

    return {"User-Agent": f"pyenroot/{__version__}"}


def speaks_tls(netloc: str, timeout: float | None) -> bool:
    """Whether the server at HOST[:PORT] (port 443 by default) completes a TLS handshake. Nothing is sent over it
    and nothing is verified: it only spares a registry on plain HTTP (with ENROOT_ALLOW_HTTP) the loading of
    every CA certificate for an HTTPS attempt that cannot succeed. Any failure reads as "no"."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(f"//{netloc}")
        host, port = parts.hostname, parts.port or 443
        if not host:
            return False
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return True
    except (OSError, ValueError):
        return False


def default_bundle() -> str | None:
    """The CA bundle requests adds to every verified connection (certifi's), trusted by both transports."""
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def _bundle_error(ca_bundle: str, why: str) -> ConfigError:
    return ConfigError(f"PYENROOT_CA_BUNDLE: cannot load {ca_bundle}: {why}")


def _readable_bundle(ca_bundle: str | None) -> str | None:
    """The bundle, checked readable now: a plain-HTTP registry never loads it, and a wrong setting must still show."""
    if ca_bundle:
        try:
            with open(ca_bundle, "rb"):
                pass
        except OSError as exc:
            raise _bundle_error(ca_bundle, exc.strerror or str(exc)) from None
    return ca_bundle


def make_ssl_context(ca_bundle: str | None, cert_file: str | None = None, cert_dir: str | None = None
                     ) -> ssl.SSLContext:
    """System CAs (or SSL_CERT_FILE / SSL_CERT_DIR, as OpenSSL reads them) plus our extra bundle."""
    import ssl

    context = ssl.create_default_context()
    if cert_file or cert_dir:
        with contextlib.suppress(OSError, ssl.SSLError):
            context.load_verify_locations(cafile=cert_file, capath=cert_dir)
    if ca_bundle:
        try:
            context.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise _bundle_error(ca_bundle, why) from None
    return context


def options_context(options: TransferOptions) -> ssl.SSLContext:
    return make_ssl_context(options.ca_bundle, options.ssl_cert_file, options.ssl_cert_dir)


class Transports:
    """The transport for short requests (pings, manifests, tokens) and the one for blobs, made when first used."""

    def __init__(self, options: TransferOptions, environ: Mapping[str, str], session: requests.Session | None = None):
        self.options = options
        self.environ = environ
        self.session = session  # injected (tests): both transports use it
        self._metadata: Transport | None = None
        self._blobs: Transport | None = None

    @property
    def metadata(self) -> Transport:
        if self._metadata is None:
            if self.session is None and not needs_full_transport(self.options, self.environ):
                from pyenroot.registry.transport_stdlib import StdlibTransport

                self._metadata = StdlibTransport(self.options)
            else:
                self._metadata = self.blobs
        return self._metadata

    def speaks_tls(self, netloc: str, timeout: float | None) -> bool:
        """`speaks_tls` on the network; an injected session (tests) is left to answer the HTTPS attempt itself."""
        return True if self.session is not None else speaks_tls(netloc, timeout)

    @property
    def blobs(self) -> Transport:
        if self._blobs is None:
            from pyenroot.registry.transport_requests import RequestsTransport, make_session

            self._blobs = RequestsTransport(self.session if self.session is not None else make_session(self.options))
        return self._blobs


def transports_for(options: TransferOptions, session: requests.Session | None = None,
                   environ: Mapping[str, str] | None = None) -> Transports:
    return Transports(options, dict(os.environ if environ is None else environ), session)
