"""Registry credentials and challenges: `WWW-Authenticate` parsing, enroot's `.credentials`, docker config files.

Parsing is pure; `find_credentials` reads the files. Credential files are looked up in this order:
`$ENROOT_CONFIG_PATH/.credentials` (netrc, as enroot), `$REGISTRY_AUTH_FILE` (else podman's default
`$XDG_RUNTIME_DIR/containers/auth.json`), `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`).
Credential helpers (`credsStore`, `credHelpers`) are not run.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from pyenroot.errors import RegistryError
from pyenroot.record import factory, record
from pyenroot.registry.uri import DOCKER_HUB, DOCKER_HUB_ALIASES


@record(frozen=True)
class Challenge:
    """One `WWW-Authenticate` challenge: scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str] = factory(dict)


@record(frozen=True)
class Credentials:
    username: str
    password: str
    source: str  # where they came from, for error messages

    def __repr__(self) -> str:  # never print a password
        return f"Credentials({self.username!r}, source={self.source!r})"


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# Compiled (and cached by re) at their first use: a registry that asks for no token needs none of them.
_PARAM = rf"\s*({_TOKEN})\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|({_TOKEN}))\s*(,|$)"
_SCHEME = rf"\s*({_TOKEN})(?:\s+|$)"


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse a `WWW-Authenticate` value into challenges (RFC 7235: quoted strings, escapes, several schemes)."""
    challenges: list[Challenge] = []
    scheme_pattern, param_pattern = re.compile(_SCHEME), re.compile(_PARAM)
    position = 0
    while position < len(header):
        if header[position] in ", \t":
            position += 1
            continue
        scheme = scheme_pattern.match(header, position)
        if not scheme:
            break
        position = scheme.end()
        params: dict[str, str] = {}
        while position < len(header):
            param = param_pattern.match(header, position)
            if not param:
                break
            quoted, plain = param.group(2), param.group(3)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain
            params[param.group(1).lower()] = value
            position = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


def preferred_challenge(challenges: list[Challenge]) -> Challenge | None:
    """Bearer if offered (tokens are scoped), else Basic; other schemes are not supported."""
    for wanted in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == wanted:
                return challenge
    return None


# ---- netrc (.credentials) ------------------------------------------------------------------------------------

@record(frozen=True)
class NetrcEntry:
    machine: str | None  # None: the `default` entry
    login: str | None
    password: str | None


def parse_netrc(text: str) -> list[NetrcEntry]:
    """Entries of a netrc file (`machine M login L password P`, `default`, `macdef` blocks skipped)."""
    entries: list[NetrcEntry] = []
    tokens = _netrc_tokens(text)
    current: dict[str, str | None] | None = None
    index = 0
    while index < len(tokens):
        word = tokens[index]
        if word in ("machine", "default"):
            if current is not None:
                entries.append(NetrcEntry(current.get("machine"), current.get("login"), current.get("password")))
            current = {"machine": None}
            if word == "machine" and index + 1 < len(tokens):
                current["machine"] = tokens[index + 1]
                index += 1
        elif word in ("login", "password", "account") and current is not None and index + 1 < len(tokens):
            current[word] = tokens[index + 1]
            index += 1
        index += 1
    if current is not None:
        entries.append(NetrcEntry(current.get("machine"), current.get("login"), current.get("password")))
    return entries


def _netrc_tokens(text: str) -> list[str]:
    tokens: list[str] = []
    lines = iter(text.splitlines())
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        words = line.split()
        if words[:1] == ["macdef"]:
            # A macro runs to the next empty line; its body is not netrc syntax.
            for body in lines:
                if not body.strip():
                    break
            continue
        tokens.extend(words)
    return tokens


_SHELL_VAR = r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))"


def substitute_password(password: str, environ: Mapping[str, str], where: str) -> str:
    """enroot's `$` passwords, done safely.

    enroot evaluates a password that starts with `$` in a shell, so `password $NGC_API_KEY` reads the
    variable. We substitute only `$VAR` and `${VAR}` from the environment; nothing is ever executed, so
    `$(command)` and backquotes are refused rather than run. A variable that is not set is an error
    (a silent empty password would only produce a confusing "access denied" later).
    """
    if not password.startswith("$"):
        return password
    if "$(" in password or "`" in password:
        raise RegistryError(f"{where}: command substitution in a password is not supported",
                            hint="put the secret in an environment variable and write password $VARIABLE")

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in environ:
            raise RegistryError(f"{where}: the password refers to ${name}, which is not set",
                                hint=f"export {name} before running pyenroot")
        return environ[name]

    return re.sub(_SHELL_VAR, lookup, password)


def _host_candidates(registry: str) -> list[str]:
    """Names a credential entry may use for `registry`: as written, without the port, Hub aliases."""
    names = [registry]
    host = registry.rsplit(":", 1)[0] if re.search(r":[0-9]+$", registry) else registry
    if host != registry:
        names.append(host)
    if registry == DOCKER_HUB:
        names.extend(sorted(DOCKER_HUB_ALIASES - {DOCKER_HUB}))
    return names


def netrc_credentials(text: str, registry: str, user: str | None, environ: Mapping[str, str],
                      source: str) -> Credentials | None:
    """The first entry for the registry (and for `user`, if the URI names one); `default` last."""
    entries = parse_netrc(text)
    for name in _host_candidates(registry):
        for entry in entries:
            if entry.machine == name and entry.password is not None and (user is None or entry.login == user):
                where = f"{source}, machine {name}"
                return Credentials(entry.login or "", substitute_password(entry.password, environ, where), source)
    for entry in entries:
        if entry.machine is None and entry.password is not None and (user is None or entry.login == user):
            return Credentials(entry.login or "", substitute_password(entry.password, environ, source), source)
    return None


def check_private(path: Path) -> None:
    """Refuse a credentials file that others may read or change (as ssh does with keys)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise RegistryError(f"{path} is accessible by group or others (mode {mode:04o}); refusing to use it",
                            hint=f"chmod 600 {path}")


# ---- docker / podman auth files -------------------------------------------------------------------------------

def _auth_key_host(key: str) -> str:
    """`https://index.docker.io/v1/` -> `index.docker.io`; `host:5000/path` -> `host:5000`."""
    key = re.sub(r"^[a-z]+://", "", key.strip())
    return key.split("/", 1)[0].lower()


def docker_config_credentials(text: str, registry: str, source: str) -> Credentials | None:
    """Credentials from the `auths` map of a docker `config.json` or a containers `auth.json`."""
    try:
        document = json.loads(text)
    except ValueError:
        raise RegistryError(f"{source} is not valid JSON") from None
    auths = document.get("auths") if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        return None
    candidates = _host_candidates(registry)
    for name in candidates:
        for key, entry in auths.items():
            if _auth_key_host(key) == name and isinstance(entry, dict):
                found = _decode_auth_entry(entry, source)
                if found:
                    return found
    return None


def _decode_auth_entry(entry: dict, source: str) -> Credentials | None:
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]), source)
    encoded = entry.get("auth")
    if not isinstance(encoded, str) or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise RegistryError(f"{source}: an 'auth' entry is not base64 of USER:PASSWORD") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise RegistryError(f"{source}: an 'auth' entry is not base64 of USER:PASSWORD")
    return Credentials(username, password, source)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror}") from None


def credential_files(config_path: Path | None, environ: Mapping[str, str]) -> list[tuple[str, Path]]:
    """(kind, path) of every credentials file to consult, in order."""
    files: list[tuple[str, Path]] = []
    if config_path is not None:
        files.append(("netrc", config_path / ".credentials"))
    if environ.get("REGISTRY_AUTH_FILE"):
        files.append(("docker", Path(environ["REGISTRY_AUTH_FILE"])))
    elif environ.get("XDG_RUNTIME_DIR"):
        files.append(("docker", Path(environ["XDG_RUNTIME_DIR"]) / "containers/auth.json"))  # `podman login`
    docker_dir = environ.get("DOCKER_CONFIG") or (f"{environ['HOME']}/.docker" if environ.get("HOME") else None)
    if docker_dir:
        files.append(("docker", Path(docker_dir) / "config.json"))
    return files


def find_credentials(registry: str, user: str | None, config_path: Path | None,
                     environ: Mapping[str, str]) -> Credentials | None:
    """Credentials for `registry` from the first file that has some; None for anonymous access."""
    for kind, path in credential_files(config_path, environ):
        if kind == "netrc" and os.path.isfile(path) and os.path.getsize(path):
            check_private(path)  # before reading: the secrets of a file others can see are never even read
        text = _read(path)
        if not text or not text.strip():
            continue
        if kind == "netrc":
            found = netrc_credentials(text, registry, user, environ, str(path))
        else:
            found = docker_config_credentials(text, registry, str(path))
            if found and user is not None and found.username != user:
                found = None
        if found:
            return found
    return None
