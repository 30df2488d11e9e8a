"""A real OCI registry for tests: Debian's `docker-registry`, on a free loopback port.

Plain HTTP by default; optionally TLS (self-signed CA), Basic auth (htpasswd) or token auth (a token
server supplied by the caller, as Docker Hub works).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

REGISTRY_BINARY = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class TLSFiles:
    ca_cert: Path
    cert: Path
    key: Path


def make_tls(directory: Path, host: str = "127.0.0.1") -> TLSFiles:
    """A throw-away CA and a server certificate for `host`, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "ext.cnf"
    ext.write_text(f"subjectAltName=IP:{host},DNS:localhost\nbasicConstraints=CA:FALSE\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pyenroot test CA",
        "-keyout", str(ca_key), "-out", str(ca_cert))
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", str(key),
        "-out", str(csr))
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(cert))
    for path in (ca_cert, cert, key):
        path.chmod(0o644)
    return TLSFiles(ca_cert, cert, key)


class LocalRegistry:
    """One docker-registry process with its own storage directory."""

    def __init__(self, workdir: Path, *, tls: TLSFiles | None = None, htpasswd: Path | None = None,
                 token_auth: dict[str, str] | None = None):
        self.workdir = workdir
        self.port = free_port()
        self.tls = tls
        self.htpasswd = htpasswd
        self.token_auth = token_auth  # keys: realm, service, issuer, rootcertbundle
        self.process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        """host:port, as written in image URIs (`docker://HOST#image:tag`)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def _config(self) -> str:
        storage = self.workdir / "storage"
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: pyenroot-tests",
        ]
        if self.tls:
            lines += ["  tls:", f"    certificate: {self.tls.cert}", f"    key: {self.tls.key}"]
        if self.htpasswd:
            lines += ["auth:", "  htpasswd:", "    realm: pyenroot-test", f"    path: {self.htpasswd}"]
        elif self.token_auth:
            lines += ["auth:", "  token:"] + [f"    {k}: {v}" for k, v in self.token_auth.items()]
        return "\n".join(lines) + "\n"

    def start(self) -> LocalRegistry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        config.write_text(self._config())
        log = open(self.workdir / "registry.log", "ab")  # noqa: SIM115 - kept open for the process's life
        self.process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=log)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.workdir / 'registry.log').read_text()}")
            try:
                requests.get(f"{self.url}/v2/", timeout=1, verify=str(self.tls.ca_cert) if self.tls else True)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start in time")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wipe(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
