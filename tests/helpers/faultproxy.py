"""A fault-injecting HTTP proxy in front of a registry, for tests: corrupt, cut, refuse or stall chosen requests.

It forwards every request to the upstream registry and logs (method, path, status). A fault applies to the
next N requests whose path contains a pattern.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import socket
import threading
from dataclasses import dataclass, field

import requests

from pyenroot.devtools.registry import free_port

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


@dataclass
class Fault:
    """kind: 'corrupt' (flip one byte), 'reset' (send `cut` of the body, then drop the connection),
    'status' (answer `status` with `headers`, nothing forwarded), 'stall' (send `cut`, then wait for release),
    'redirect' (answer 307 to `location` + the request's path, as registries send blobs to storage)."""

    kind: str
    pattern: str
    times: int = 1
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    location: str = ""
    cut: float = 0.5  # reset / stall: the share of the body sent first


class FaultProxy:
    """With `basic_auth` (user, password) the proxy itself demands that login, as an authenticating registry."""

    def __init__(self, upstream: str, basic_auth: tuple[str, str] | None = None):
        self.upstream = upstream.rstrip("/")
        self.basic_auth = basic_auth
        self.seen_headers: list[tuple[str, dict[str, str]]] = []  # (path, request headers) of every request
        self.port = free_port()
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, int]] = []
        self.stalled = threading.Event()  # set when a 'stall' fault holds a request
        self.release = threading.Event()  # set to let stalled requests end (their connection is dropped)
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def count(self, method: str, pattern: str) -> int:
        with self._lock:
            return sum(1 for m, path, _ in self.log if m == method and pattern in path)

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.pattern in path:
                    fault.times -= 1
                    return fault
        return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.log.append((method, path, status))

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                proxy._handle(self, "GET")

            def do_HEAD(self):
                proxy._handle(self, "HEAD")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def _logged_in(self, handler: http.server.BaseHTTPRequestHandler) -> bool:
        assert self.basic_auth is not None
        expected = base64.b64encode(":".join(self.basic_auth).encode()).decode()
        return handler.headers.get("Authorization") == f"Basic {expected}"

    @staticmethod
    def _answer(handler: http.server.BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
        handler.send_response(status)
        for name, value in {**headers, "Content-Length": "0"}.items():
            handler.send_header(name, value)
        handler.end_headers()

    def _handle(self, handler: http.server.BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            self.seen_headers.append((handler.path, dict(handler.headers.items())))
        if self.basic_auth and not self._logged_in(handler):
            self._record(method, handler.path, 401)
            self._answer(handler, 401, {"WWW-Authenticate": 'Basic realm="faultproxy"'})
            return
        fault = self._take_fault(handler.path)
        if fault and fault.kind == "redirect":
            self._record(method, handler.path, 307)
            self._answer(handler, 307, {"Location": fault.location.rstrip("/") + handler.path})
            return
        if fault and fault.kind == "status":
            self._record(method, handler.path, fault.status)
            self._answer(handler, fault.status, fault.headers)
            return
        # The upstream registry is open: what the client logged in with stays here.
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection", "authorization")}
        upstream = requests.request(method, self.upstream + handler.path, headers=headers, allow_redirects=False,
                                    timeout=60)
        body = upstream.content
        self._record(method, handler.path, upstream.status_code)
        handler.send_response(upstream.status_code)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if method == "HEAD":
            return
        if fault is None or upstream.status_code != 200 or len(body) < 2:
            handler.wfile.write(body)
        elif fault.kind == "corrupt":
            middle = len(body) // 2
            handler.wfile.write(body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:])
        else:  # reset / stall: half the body, then the connection goes away
            handler.wfile.write(body[: int(len(body) * fault.cut)])
            handler.wfile.flush()
            if fault.kind == "stall":
                self.stalled.set()
                self.release.wait(600)
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
