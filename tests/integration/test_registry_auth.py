"""Authenticated and TLS registries, as the unprivileged user: htpasswd (Basic), token auth, self-signed CA."""

import base64
import json
import subprocess

import pytest
import requests

from pyenroot.devtools import imagebuilder
from pyenroot.devtools.registry import LocalRegistry, make_tls
from tests.helpers.tokenserver import TokenServer

HTTP = {"ENROOT_ALLOW_HTTP": "y", "ENROOT_TRANSFER_RETRIES": "0"}


def small_image(text: bytes) -> imagebuilder.Image:
    return imagebuilder.build_image([imagebuilder.tar_bytes([imagebuilder.Entry("hello", data=text)])])


def write_credentials(user, text: str, mode: int = 0o600):
    config = user.make_dir(".config/enroot")
    path = config / ".credentials"
    path.write_text(text)
    path.chmod(mode)
    user.give(path)
    return path


@pytest.fixture(scope="module")
def basic_registry(session_dir, host_setup):
    workdir = session_dir / "registry-basic"
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = workdir / "htpasswd"
    entry = subprocess.run(["htpasswd", "-Bbn", "alice", "wonderland"], check=True, capture_output=True, text=True)
    htpasswd.write_text(entry.stdout)
    registry = LocalRegistry(workdir, htpasswd=htpasswd).start()
    session = requests.Session()
    session.auth = ("alice", "wonderland")
    image = small_image(b"basic")
    imagebuilder.Pusher(registry.url, session).image("private/app", "1", image)
    yield registry, image
    registry.wipe()


def test_basic_auth_needs_credentials(user, basic_registry):
    registry, _ = basic_registry
    result = user.pyenroot("digest", f"docker://{registry.host}#private/app:1", env=HTTP)
    assert result.returncode == 1
    assert "access denied to 127.0.0.1" in result.stderr and "(registry-denied)" in result.stderr
    assert "hint:" in result.stderr and ".credentials" in result.stderr


def test_basic_auth_with_netrc_and_dollar_password(user, basic_registry):
    registry, image = basic_registry
    write_credentials(user, "machine 127.0.0.1 login alice password $REG_PASSWORD\n")
    uri = f"docker://{registry.host}#private/app:1"
    result = user.pyenroot("digest", uri, env={**HTTP, "REG_PASSWORD": "wonderland"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == image.digest
    result = user.pyenroot("digest", uri, env={**HTTP, "REG_PASSWORD": "wrong"})
    assert result.returncode == 1 and "access denied" in result.stderr


def test_group_readable_credentials_are_refused(user, basic_registry):
    registry, _ = basic_registry
    path = write_credentials(user, "machine 127.0.0.1 login alice password wonderland\n", mode=0o644)
    result = user.pyenroot("digest", f"docker://{registry.host}#private/app:1", env=HTTP)
    assert result.returncode == 1
    assert f"{path} is accessible by group or others (mode 0644)" in result.stderr
    assert f"hint: chmod 600 {path}" in result.stderr


def test_docker_config_auths(user, basic_registry):
    registry, image = basic_registry
    docker = user.make_dir(".docker")
    auth = base64.b64encode(b"alice:wonderland").decode()
    (docker / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    user.give(docker)
    result = user.pyenroot("digest", f"docker://{registry.host}#private/app:1", env=HTTP)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == image.digest


@pytest.fixture(scope="module")
def token_registry(session_dir, host_setup):
    workdir = session_dir / "registry-token"
    tokens = TokenServer(workdir / "tokens", users={"bob": "builder"}).start()
    registry = LocalRegistry(workdir / "registry", token_auth=tokens.registry_config()).start()
    session = requests.Session()
    pushed = {}
    for repository in ("public/app", "private/app"):
        token = tokens.make_token("bob", [{"type": "repository", "name": repository, "actions": ["pull", "push"]}])
        session.headers["Authorization"] = f"Bearer {token}"
        pushed[repository] = small_image(repository.encode())
        imagebuilder.Pusher(registry.url, session).image(repository, "1", pushed[repository])
    yield registry, tokens, pushed
    registry.wipe()
    tokens.stop()


def test_token_auth_anonymous_pull(user, token_registry):
    registry, tokens, pushed = token_registry
    result = user.pyenroot("digest", f"docker://{registry.host}#public/app:1", env=HTTP)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == pushed["public/app"].digest
    assert (None, "repository:public/app:pull") in tokens.requests


def test_token_auth_private_needs_a_login(user, token_registry):
    registry, tokens, pushed = token_registry
    uri = f"docker://{registry.host}#private/app:1"
    result = user.pyenroot("digest", uri, env=HTTP)
    assert result.returncode == 1 and "access denied" in result.stderr
    write_credentials(user, "machine 127.0.0.1 login bob password builder\n")
    result = user.pyenroot("digest", uri, env=HTTP)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == pushed["private/app"].digest
    assert ("bob", "repository:private/app:pull") in tokens.requests
    write_credentials(user, "machine 127.0.0.1 login bob password wrong\n")
    result = user.pyenroot("digest", uri, env=HTTP)
    assert result.returncode == 1 and "the token service refused the login" in result.stderr


@pytest.fixture(scope="module")
def tls_registry(session_dir, host_setup):
    workdir = session_dir / "registry-tls"
    tls = make_tls(workdir / "tls")
    registry = LocalRegistry(workdir / "registry", tls=tls).start()
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE in the environment replaces `verify`
    session.verify = str(tls.ca_cert)
    image = small_image(b"tls")
    imagebuilder.Pusher(registry.url, session).image("secure/app", "1", image)
    yield registry, tls, image
    registry.wipe()


def test_tls_with_a_private_ca(user, tls_registry):
    registry, tls, image = tls_registry
    uri = f"docker://{registry.host}#secure/app:1"
    result = user.pyenroot("digest", uri, env={"ENROOT_TRANSFER_RETRIES": "0"})
    assert result.returncode == 1
    assert "TLS failure talking to" in result.stderr and "certificate verify failed" in result.stderr
    assert "PYENROOT_CA_BUNDLE" in result.stderr
    result = user.pyenroot("digest", uri, env={"PYENROOT_CA_BUNDLE": str(tls.ca_cert)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == image.digest


# A proxy that applies to no loopback URL (NO_PROXY): the client then sends its short requests through requests
# too, instead of http.client (test_registry_light_transport.py).
THROUGH_REQUESTS = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}


def test_tls_reads_the_same_over_both_transports(user, tls_registry):
    registry, tls, image = tls_registry
    uri = f"docker://{registry.host}#secure/app:1"
    refused = [user.pyenroot("digest", uri, env={"ENROOT_TRANSFER_RETRIES": "0", **extra})
               for extra in ({}, THROUGH_REQUESTS)]
    assert refused[0].returncode == refused[1].returncode == 1
    assert refused[0].stderr == refused[1].stderr and "certificate verify failed" in refused[0].stderr
    for extra in ({}, THROUGH_REQUESTS):
        result = user.pyenroot("digest", uri, env={"PYENROOT_CA_BUNDLE": str(tls.ca_cert), **extra})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == image.digest


def test_token_flow_over_both_transports(user, token_registry):
    registry, tokens, pushed = token_registry
    write_credentials(user, "machine 127.0.0.1 login bob password builder\n")
    for extra in ({}, THROUGH_REQUESTS):
        tokens.requests.clear()
        result = user.pyenroot("digest", f"docker://{registry.host}#private/app:1", env={**HTTP, **extra})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == pushed["private/app"].digest
        assert tokens.requests == [("bob", "repository:private/app:pull")]


def test_allow_http_still_prefers_https_where_tls_is_spoken(user, tls_registry, registry):
    """With ENROOT_ALLOW_HTTP a TLS-less registry is asked over HTTP straight away (no CA store loaded for an
    HTTPS attempt that cannot succeed); one that speaks TLS is still asked over verified HTTPS."""
    from pyenroot.registry.session import speaks_tls

    tls_reg, tls, image = tls_registry
    assert speaks_tls(tls_reg.host, 5) and not speaks_tls(registry.host, 5)
    result = user.pyenroot("digest", f"docker://{tls_reg.host}#secure/app:1",
                           env={**HTTP, "PYENROOT_CA_BUNDLE": str(tls.ca_cert)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == image.digest
