"""The HTTP session registry requests run over: transfer options read from the settings (timeouts, retries,
connections, proxies, certificates), the TLS context (system CAs plus PYENROOT_CA_BUNDLE) and pooled adapters.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter

from pyenroot.config import Settings
from pyenroot.errors import ConfigError

# With ENROOT_TRANSFER_TIMEOUT=0 (no limit on a whole transfer) a connection that sends nothing for this
# long is still considered dead, so that a stalled server cannot hang an import forever.
STALL_TIMEOUT = 300.0


# Proxy settings -> keys of requests' `proxies` mapping.
_PROXY_SETTINGS = {"http_proxy": "http", "https_proxy": "https", "all_proxy": "all", "no_proxy": "no_proxy"}


@dataclass(frozen=True)
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
            ca_bundle=settings.get("PYENROOT_CA_BUNDLE") or None,
            max_connections=max(0, settings.integer("ENROOT_MAX_CONNECTIONS")),
            ssl_cert_file=settings.get("SSL_CERT_FILE") or None,
            ssl_cert_dir=settings.get("SSL_CERT_DIR") or None,
            proxies=tuple((name, value) for key, name in _PROXY_SETTINGS.items() if (value := settings.get(key))),
        )

    @property
    def request_timeout(self) -> tuple[float | None, float]:
        return (self.connect_timeout, self.transfer_timeout or STALL_TIMEOUT)


class _ContextAdapter(HTTPAdapter):
    """An HTTPS adapter with our own SSLContext: the system CA store plus PYENROOT_CA_BUNDLE."""

    def __init__(self, context: ssl.SSLContext, **kwargs):
        self._context = context
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self._context
        return super().init_poolmanager(*args, **kwargs)


def make_ssl_context(ca_bundle: str | None, cert_file: str | None = None, cert_dir: str | None = None
                     ) -> ssl.SSLContext:
    """System CAs (or SSL_CERT_FILE / SSL_CERT_DIR, as OpenSSL reads them) plus our extra bundle."""
    context = ssl.create_default_context()
    if cert_file or cert_dir:
        with contextlib.suppress(OSError, ssl.SSLError):
            context.load_verify_locations(cafile=cert_file, capath=cert_dir)
    if ca_bundle:
        try:
            context.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"PYENROOT_CA_BUNDLE: cannot load {ca_bundle}: {why}") from None
    return context


def make_session(options: TransferOptions) -> requests.Session:
    """A session whose pools hold as many connections as we may open at once."""
    session = requests.Session()
    pool = max(10, options.max_connections or 32)
    context = make_ssl_context(options.ca_bundle, options.ssl_cert_file, options.ssl_cert_dir)
    session.mount("https://", _ContextAdapter(context, pool_maxsize=pool))
    session.mount("http://", HTTPAdapter(pool_maxsize=pool))
    session.proxies.update(dict(options.proxies))  # the environment's own proxies still take precedence
    return session
