"""HTTP to one registry endpoint (the origin or a mirror) for one repository, over injected transports
(`session.Transports`: short requests and blobs may go over different ones; the rules here are the same).

Handles the `/v2/` ping (only where it chooses between HTTPS and plain HTTP), Bearer and Basic auth, redirects
(the Authorization header never leaves the registry's host), retries with backoff on connection errors, 5xx and
429 (honouring Retry-After), timeouts, and turns every failure into a one-line RegistryError.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlencode, urljoin, urlsplit

from pyenroot.errors import RegistryError
from pyenroot.registry.auth import Challenge, Credentials, parse_www_authenticate, preferred_challenge
from pyenroot.registry.endpoints import Endpoint
from pyenroot.registry.manifest import ACCEPT
from pyenroot.registry.session import (
    STALL_TIMEOUT,
    BadURL,
    TLSFailure,
    TransferOptions,
    Transport,
    TransportError,
    Transports,
    Unreachable,
)

TYPE_CHECKING = False

if TYPE_CHECKING:
    from pyenroot.registry.session import Response

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
MAX_RETRY_AFTER = 120.0
CHUNK_SIZE = 1 << 20
MAX_MANIFEST = 8 << 20  # the distribution spec asks registries to accept 4 MiB manifests
MAX_ERROR_BODY = 64 << 10
MAX_TOKEN_BODY = 1 << 20


def retry_delay(response: Response | None, attempt: int) -> float:
    """Retry-After (seconds or an HTTP date) when given, else exponential backoff from 0.5 s (capped)."""
    header = response.headers.get("Retry-After") if response is not None else None
    if header:
        header = header.strip()
        if header.isdigit():
            return min(float(header), MAX_RETRY_AFTER)
        import email.utils  # only for a Retry-After date: rare

        try:
            when = email.utils.parsedate_to_datetime(header)
            return max(0.0, min(when.timestamp() - time.time(), MAX_RETRY_AFTER))
        except (TypeError, ValueError):
            pass
    return min(0.5 * (2 ** attempt), 8.0)


class TransferInterrupted(RegistryError):
    """A body stopped mid-way (reset, timeout); the caller may resume it."""


def read_limited(response: Response, limit: int) -> bytes:
    """A small body (manifest, error document), decoded if the server compressed it, refusing more than
    `limit` bytes: memory stays bounded whatever a registry sends."""
    parts, total = [], 0
    for chunk in response.chunks(1 << 16, True):
        total += len(chunk)
        if total > limit:
            raise RegistryError(f"{urlsplit(response.url).netloc} sent more than {limit} bytes for {response.url}")
        parts.append(chunk)
    return b"".join(parts)


def _error_codes(response: Response) -> list[str]:
    """Codes from a registry's JSON error body (MANIFEST_UNKNOWN, DENIED, ...)."""
    try:
        body = json.loads(read_limited(response, MAX_ERROR_BODY) or b"{}")
    except (ValueError, RegistryError, TransportError):
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    return [str(e.get("code")) for e in errors or [] if isinstance(e, dict)]


class RegistryClient:
    """Requests to one endpoint for one repository. Thread-safe: layer downloads share one client."""

    def __init__(self, endpoint: Endpoint, repository: str, *, transports: Transports, options: TransferOptions,
                 credentials: Callable[[str], Credentials | None] = lambda host: None,
                 credentials_hint: str = "", user: str | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.endpoint = endpoint
        self.repository = f"{endpoint.prefix}/{repository}" if endpoint.prefix else repository
        self.transports = transports
        self.options = options
        self._credentials = credentials
        self._credentials_hint = credentials_hint
        self._user = user
        self._sleep = sleep
        self._scheme: str | None = endpoint.scheme
        self._authorization: str | None = None
        self._auth_lock = threading.Lock()

    @property
    def host(self) -> str:
        return self.endpoint.host

    def describe(self) -> str:
        return f"{self.host}/{self.repository}"

    # ---- base URL and ping ----------------------------------------------------------------------------------

    def _base(self) -> str:
        if self._scheme is None:
            schemes = self._schemes()
            if len(schemes) == 1:
                # A ping would decide nothing, and cost a round trip before the first request (a token
                # challenge, when the registry has one, comes with that request's 401).
                self._scheme = schemes[0]
            else:
                self.ping(schemes)
        return f"{self._scheme}://{self.host}"

    def _schemes(self) -> list[str]:
        """The schemes to try, best first: HTTPS only, unless ENROOT_ALLOW_HTTP allows plain HTTP too."""
        if not self.options.allow_http:
            return ["https"]
        if not self.transports.speaks_tls(self.host, self.options.connect_timeout or STALL_TIMEOUT):
            return ["http"]  # no TLS there: the HTTPS attempt would fail (and cost the CA store's loading)
        return ["https", "http"]

    def ping(self, schemes: list[str]) -> None:
        """GET /v2/ with each scheme in turn: the first that a registry answers on is kept."""
        last: RegistryError | None = None
        for position, scheme in enumerate(schemes):
            # With plain HTTP still to try, an HTTPS port that refuses is not worth the retries.
            retries = 0 if position < len(schemes) - 1 else None
            try:
                response = self._with_retries("GET", f"{scheme}://{self.host}/v2/", {}, stream=False, retries=retries,
                                              transport=self.transports.metadata)
            except RegistryError as error:
                last = error
                continue
            response.close()
            if response.status_code not in (200, 401):
                raise RegistryError(f"{self.host} does not look like a registry: GET /v2/ answered "
                                    f"{response.status_code}", reference="registry-unreachable")
            self._scheme = scheme
            return
        assert last is not None
        raise last

    # ---- public operations --------------------------------------------------------------------------------

    def get_manifest(self, reference: str) -> tuple[bytes, str]:
        """The raw manifest (or index) bytes for a tag or digest, and its Content-Type."""
        response = self.request("GET", f"/v2/{self.repository}/manifests/{reference}", {"Accept": ACCEPT},
                                stream=True, transport=self.transports.metadata)
        with response:
            self._raise_for_status(response, f"{self.repository}:{reference}" if not reference.startswith("sha256:")
                                   else f"{self.repository}@{reference}")
            try:
                body = read_limited(response, MAX_MANIFEST)
            except (TransportError, OSError) as exc:
                raise RegistryError(f"reading the manifest from {self.host} failed: {_reason(exc)}",
                                    reference="registry-unreachable") from None
            return body, response.headers.get("Content-Type", "")

    def blob_chunks(self, digest: str, offset: int = 0) -> Iterator[bytes]:
        """Stream a blob from byte `offset` on (a Range request; a server that ignores it is skipped ahead).

        Bytes come exactly as stored (no Content-Encoding decoding), since the digest covers them. Network
        failures mid-body raise TransferInterrupted: the caller may resume from what it has.
        """
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = self.request("GET", f"/v2/{self.repository}/blobs/{digest}", headers, stream=True,
                                transport=self.transports.blobs)
        with response:
            self._raise_for_status(response, f"blob {digest} of {self.repository}")
            skip = offset if offset and not _range_honoured(response, offset) else 0
            deadline = time.monotonic() + self.options.transfer_timeout if self.options.transfer_timeout else None
            try:
                for chunk in response.chunks(CHUNK_SIZE, False):
                    if deadline is not None and time.monotonic() > deadline:
                        raise TransferInterrupted(f"blob {digest}: transfer took longer than "
                                                  f"ENROOT_TRANSFER_TIMEOUT ({self.options.transfer_timeout:g} s)")
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                    if chunk:
                        yield chunk
            except (TransportError, OSError) as exc:
                raise TransferInterrupted(f"download of blob {digest} from {self.host} interrupted: "
                                          f"{_reason(exc)}", reference="registry-unreachable") from None

    # ---- the request pipeline: retries -> auth -> redirects -------------------------------------------------

    def request(self, method: str, path: str, headers: dict[str, str], *, stream: bool = False,
                transport: Transport | None = None) -> Response:
        url = f"{self._base()}{path}"
        response = self._with_retries(method, url, headers, stream=stream, authorize=True,
                                      transport=transport or self.transports.blobs)
        return response

    def _with_retries(self, method: str, url: str, headers: dict[str, str], *, stream: bool, transport: Transport,
                      authorize: bool = False, retries: int | None = None) -> Response:
        retries = self.options.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                if authorize:
                    response = self._authorized(transport, method, url, headers, stream)
                else:
                    response = self._follow(transport, method, url, headers, stream)
            except TLSFailure as exc:
                reason = _reason(exc)
                hint = ("the registry may speak plain HTTP: allow it with ENROOT_ALLOW_HTTP=y"
                        if "wrong version number" in reason else
                        "trust the registry's CA with PYENROOT_CA_BUNDLE=/path/ca.pem")
                raise RegistryError(f"TLS failure talking to {urlsplit(url).netloc}: {reason}",
                                    reference="registry-tls", hint=hint) from None
            except BadURL as exc:
                raise RegistryError(f"cannot talk to {urlsplit(url).netloc}: {_reason(exc)}", reference="registry-url",
                                    hint="check the registry name, PYENROOT_REGISTRY_MIRRORS and the proxy settings"
                                    ) from None
            except Unreachable as exc:
                if attempt < retries:
                    self._sleep(retry_delay(None, attempt))
                    attempt += 1
                    continue
                raise RegistryError(f"registry {urlsplit(url).netloc} unreachable: {_reason(exc)}",
                                    reference="registry-unreachable",
                                    hint="check the name, the network and proxy settings") from None
            if response.status_code in RETRY_STATUSES and attempt < retries:
                delay = retry_delay(response, attempt)
                response.close()
                self._sleep(delay)
                attempt += 1
                continue
            return response

    def _authorized(self, transport: Transport, method: str, url: str, headers: dict[str, str],
                    stream: bool) -> Response:
        sent_with = self._authorization
        response = self._follow(transport, method, url, self._with_auth(headers), stream)
        if response.status_code != 401:
            return response
        challenge = preferred_challenge(parse_www_authenticate(response.headers.get("WWW-Authenticate", "")))
        if challenge is None:
            return response
        response.close()
        with self._auth_lock:
            # Another thread may have renewed the token while we waited; only one fetches.
            if self._authorization == sent_with:
                self._authorization = self._authenticate(challenge)
        return self._follow(transport, method, url, self._with_auth(headers), stream)

    def _with_auth(self, headers: dict[str, str]) -> dict[str, str]:
        if self._authorization:
            return {**headers, "Authorization": self._authorization}
        return dict(headers)

    def _follow(self, transport: Transport, method: str, url: str, headers: dict[str, str], stream: bool) -> Response:
        """Send, following redirects ourselves: the Authorization header goes only to the original host."""
        origin = urlsplit(url)
        for _ in range(MAX_REDIRECTS + 1):
            response = transport.send(method, url, headers, stream=stream, timeout=self.options.request_timeout)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                return response
            response.close()
            target = urlsplit(urljoin(url, location))
            if target.scheme == "http" and origin.scheme == "https" and not self.options.allow_http:
                raise RegistryError(f"{origin.netloc} redirected to plain HTTP ({target.netloc})",
                                    hint="set ENROOT_ALLOW_HTTP=y to allow it")
            if (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            if response.status_code == 303 and method != "HEAD":
                method = "GET"
            url = target.geturl()
        raise RegistryError(f"too many redirects from {origin.netloc}")

    # ---- authentication -------------------------------------------------------------------------------------

    def _lookup_credentials(self) -> Credentials | None:
        credentials = self._credentials(self.host)
        if credentials is None and self._user:
            raise RegistryError(f"no password for {self._user} at {self.host}", reference="registry-denied",
                                hint=self._credentials_hint or "add it to the credentials file")
        return credentials

    def _authenticate(self, challenge: Challenge) -> str:
        """The Authorization header value answering `challenge`."""
        credentials = self._lookup_credentials()
        if challenge.scheme == "basic":
            if credentials is None:
                raise self._denied("the registry requires a login")
            return _basic(credentials)
        return "Bearer " + self._fetch_token(challenge, credentials)

    def _fetch_token(self, challenge: Challenge, credentials: Credentials | None) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(f"{self.host} asked for a token without saying where to get it (no realm)")
        params = {k: v for k, v in challenge.params.items() if k in ("service", "scope")}
        params.setdefault("scope", f"repository:{self.repository}:pull")
        if urlsplit(realm).scheme == "http" and not self.options.allow_http:
            raise RegistryError(f"token service {urlsplit(realm).netloc} is plain HTTP",
                                hint="set ENROOT_ALLOW_HTTP=y to allow it")
        separator = "&" if urlsplit(realm).query else "?"
        url = f"{realm}{separator}{urlencode(params)}"
        headers = {"Authorization": _basic(credentials)} if credentials else {}
        attempt = 0
        while True:
            try:
                response = self._follow(self.transports.metadata, "GET", url, headers, False)
            except TLSFailure as exc:
                raise RegistryError(f"TLS failure talking to {urlsplit(realm).netloc}: {_reason(exc)}",
                                    reference="registry-tls",
                                    hint="trust the CA with PYENROOT_CA_BUNDLE=/path/ca.pem") from None
            except BadURL as exc:
                raise RegistryError(f"cannot talk to token service {urlsplit(realm).netloc}: {_reason(exc)}",
                                    reference="registry-url") from None
            except Unreachable as exc:
                if attempt >= self.options.retries:
                    raise RegistryError(f"token service {urlsplit(realm).netloc} unreachable: {_reason(exc)}",
                                        reference="registry-unreachable") from None
                self._sleep(retry_delay(None, attempt))
                attempt += 1
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.options.retries:
                delay = retry_delay(response, attempt)
                response.close()
                self._sleep(delay)
                attempt += 1
                continue
            break
        with response:
            if response.status_code in (401, 403):
                raise self._denied("the token service refused the login" if credentials
                                   else "anonymous access refused")
            if response.status_code != 200:
                raise RegistryError(f"token service {urlsplit(realm).netloc} answered {response.status_code}")
            try:
                body = json.loads(read_limited(response, MAX_TOKEN_BODY))
                token = body.get("token") or body.get("access_token")
            except (ValueError, AttributeError, RegistryError, TransportError):
                token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token service {urlsplit(realm).netloc} sent no token")
        return token

    # ---- errors ---------------------------------------------------------------------------------------------

    def _denied(self, detail: str) -> RegistryError:
        return RegistryError(f"access denied to {self.describe()}: {detail}", reference="registry-denied",
                             hint=self._credentials_hint or None)

    def _raise_for_status(self, response: Response, what: str) -> None:
        status = response.status_code
        if status < 400:
            return
        codes = _error_codes(response)
        if status == 404 or {"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"} & set(codes):
            raise RegistryError(f"not found: {what} on {self.host}", reference="registry-not-found",
                                hint="check the image name and tag" if "blob" not in what else None)
        if status in (401, 403):
            raise self._denied(", ".join(codes) or f"HTTP {status}")
        if status in RETRY_STATUSES:
            raise RegistryError(f"{self.host} answered {status} {response.reason} for {what}",
                                hint="the registry is busy or failing; retry later or raise ENROOT_TRANSFER_RETRIES")
        raise RegistryError(f"{self.host} answered {status} {response.reason} for {what}")


def _basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _range_honoured(response: Response, offset: int) -> bool:
    """True when a 206 answer starts exactly at `offset`; anything else is the whole blob again."""
    content_range = response.headers.get("Content-Range", "")
    return response.status_code == 206 and content_range.startswith(f"bytes {offset}-")


def _reason(exc: BaseException) -> str:
    """The innermost useful message of a transport's exception, on one line."""
    text = str(exc)
    for marker in ("certificate verify failed", "Connection refused", "Name or service not known",
                   "Temporary failure in name resolution", "No route to host", "Network is unreachable",
                   "Read timed out", "Connect timeout", "timed out", "Connection reset", "IncompleteRead",
                   "wrong version number", "hostname mismatch"):
        if marker in text:
            return marker[0].lower() + marker[1:]
    return " ".join(text.split())[:200] or type(exc).__name__
