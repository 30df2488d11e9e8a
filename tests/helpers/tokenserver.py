"""A token server for a registry in `auth: token` mode, as Docker Hub works: Basic login in, signed JWT out.

Tokens are RS256 JWTs signed with `openssl` by a throw-away key whose self-signed certificate the registry
trusts (`rootcertbundle`); the certificate travels in the token's `x5c` header.
"""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pyenroot.devtools.registry import free_port


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Grants what is asked to known users; anonymous users get `pull` on repositories under `public/`."""

    def __init__(self, workdir: Path, users: dict[str, str], service: str = "pyenroot-test-registry",
                 issuer: str = "pyenroot-test-issuer"):
        self.workdir = workdir
        self.users = users
        self.service = service
        self.issuer = issuer
        self.port = free_port()
        self.requests: list[tuple[str | None, str]] = []  # (user or None, scope)
        self.key = workdir / "token.key"
        self.cert = workdir / "token.crt"
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_config(self) -> dict[str, str]:
        """The `token_auth` mapping for LocalRegistry."""
        return {"realm": self.realm, "service": self.service, "issuer": self.issuer,
                "rootcertbundle": str(self.cert)}

    def _make_key(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=pyenroot test token issuer", "-keyout", str(self.key), "-out", str(self.cert)],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self._x5c = base64.b64encode(der).decode()

    def make_token(self, subject: str, access: list[dict]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 3600, "nbf": now - 60,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), check=True, capture_output=True).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def _grant(self, user: str | None, scopes: list[str]) -> list[dict]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            wanted = actions.split(",")
            granted = wanted if user else [a for a in wanted if a == "pull" and name.startswith("public/")]
            if granted:
                access.append({"type": "repository", "name": name, "actions": granted})
        return access

    def _login(self, header: str | None) -> tuple[bool, str | None]:
        """(ok, user): no header is anonymous; a wrong password is not ok."""
        if not header:
            return True, None
        if not header.startswith("Basic "):
            return False, None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return (self.users.get(user) == password, user)

    def start(self) -> TokenServer:
        self._make_key()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = parse_qs(urlsplit(self.path).query)
                ok, user = server._login(self.headers.get("Authorization"))
                scopes = query.get("scope", [])
                server.requests.append((user, " ".join(scopes)))
                if not ok or query.get("service") != [server.service]:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                token = server.make_token(user or "", server._grant(user, scopes))
                body = json.dumps({"token": token, "access_token": token, "expires_in": 3600}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
