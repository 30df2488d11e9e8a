"""WWW-Authenticate parsing, netrc `.credentials` (with safe `$` passwords) and docker/podman auth files."""

import base64
import json

import pytest

from pyenroot.errors import RegistryError
from pyenroot.registry import auth
from pyenroot.registry.auth import Challenge, find_credentials, parse_www_authenticate, preferred_challenge


def test_bearer_challenge():
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/ubuntu:pull"')
    assert parse_www_authenticate(header) == [Challenge("bearer", {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
        "scope": "repository:library/ubuntu:pull"})]


def test_challenge_with_spaces_escapes_tokens_and_several_schemes():
    header = 'Basic realm="my \\"quoted\\" realm", charset=UTF-8, Bearer realm="https://t/x",scope="a:b:pull,push"'
    challenges = parse_www_authenticate(header)
    assert challenges[0] == Challenge("basic", {"realm": 'my "quoted" realm', "charset": "UTF-8"})
    assert challenges[1] == Challenge("bearer", {"realm": "https://t/x", "scope": "a:b:pull,push"})
    assert preferred_challenge(challenges).scheme == "bearer"


def test_unknown_schemes_are_not_preferred():
    assert preferred_challenge(parse_www_authenticate('Negotiate abc, Digest realm="x"')) is None
    assert parse_www_authenticate("") == []


NETRC = """
# comment
machine nvcr.io login $oauthtoken password $NGC_API_KEY
machine 127.0.0.1 login alice password s3cret
machine 127.0.0.1 login bob password ${BOB_PASS}
machine registry-1.docker.io
    login hubuser
    password hubpass
macdef init
    machine evil.example login x password y

default login anon password anonpass
"""


def test_netrc_lookup_and_safe_substitution():
    env = {"NGC_API_KEY": "key123", "BOB_PASS": "b0b"}
    found = auth.netrc_credentials(NETRC, "nvcr.io", None, env, "creds")
    assert (found.username, found.password) == ("$oauthtoken", "key123")  # the login is literal
    assert auth.netrc_credentials(NETRC, "127.0.0.1:5000", None, env, "c").username == "alice"  # port dropped
    assert auth.netrc_credentials(NETRC, "127.0.0.1:5000", "bob", env, "c").password == "b0b"
    assert auth.netrc_credentials(NETRC, "registry-1.docker.io", None, env, "c").password == "hubpass"
    assert auth.netrc_credentials(NETRC, "other.io", None, env, "c").username == "anon"
    assert auth.netrc_credentials(NETRC, "evil.example", "x", env, "c") is None  # macdef bodies are not entries


def test_unset_variable_and_command_substitution_are_refused():
    with pytest.raises(RegistryError, match=r"refers to \$NGC_API_KEY, which is not set"):
        auth.netrc_credentials(NETRC, "nvcr.io", None, {}, "creds")
    with pytest.raises(RegistryError, match="command substitution"):
        auth.substitute_password("$(cat /etc/shadow)", {}, "x")
    with pytest.raises(RegistryError, match="command substitution"):
        auth.substitute_password("$`id`", {}, "x")
    assert auth.substitute_password("plain$notexpanded", {}, "x") == "plain$notexpanded"
    assert auth.substitute_password("$A-$B", {"A": "1", "B": "2"}, "x") == "1-2"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def test_docker_config_auths():
    config = json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hub:hubpw")},
        "127.0.0.1:5000": {"auth": b64("alice:pa:ss")},
        "http://other.io/some/path": {"username": "u", "password": "p"},
    }, "credsStore": "desktop"})
    assert auth.docker_config_credentials(config, "registry-1.docker.io", "f").password == "hubpw"
    found = auth.docker_config_credentials(config, "127.0.0.1:5000", "f")
    assert (found.username, found.password) == ("alice", "pa:ss")
    assert auth.docker_config_credentials(config, "other.io", "f").username == "u"
    assert auth.docker_config_credentials(config, "nope.io", "f") is None
    with pytest.raises(RegistryError, match="not base64"):
        auth.docker_config_credentials(json.dumps({"auths": {"x.io": {"auth": "!!"}}}), "x.io", "f")


def test_find_credentials_order_and_permissions(tmp_path):
    config_path = tmp_path / "enroot"
    config_path.mkdir()
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker/config.json").write_text(json.dumps({"auths": {"r.io": {"auth": b64("docker:dpw")}}}))
    env = {"HOME": str(home)}
    assert find_credentials("r.io", None, config_path, env).username == "docker"

    runtime = tmp_path / "run"
    (runtime / "containers").mkdir(parents=True)
    (runtime / "containers/auth.json").write_text(json.dumps({"auths": {"r.io": {"auth": b64("login:lpw")}}}))
    env["XDG_RUNTIME_DIR"] = str(runtime)
    assert find_credentials("r.io", None, config_path, env).username == "login"  # podman login's default file

    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {"r.io": {"auth": b64("podman:ppw")}}}))
    env["REGISTRY_AUTH_FILE"] = str(authfile)
    assert find_credentials("r.io", None, config_path, env).username == "podman"

    creds = config_path / ".credentials"
    creds.write_text("machine r.io login enroot password epw\n")
    creds.chmod(0o600)
    assert find_credentials("r.io", None, config_path, env).username == "enroot"
    assert find_credentials("r.io", "podman", config_path, env).username == "podman"  # USER@ in the URI
    assert find_credentials("none.io", None, config_path, env) is None

    creds.chmod(0o640)
    with pytest.raises(RegistryError, match=r"accessible by group or others \(mode 0640\)") as info:
        find_credentials("r.io", None, config_path, env)
    assert info.value.hint == f"chmod 600 {creds}"


def test_credentials_repr_hides_the_password():
    assert "secret" not in repr(auth.Credentials("u", "secret", "file"))
