"""Where a registry's requests go: its mirrors from PYENROOT_REGISTRY_MIRRORS, in order, then the registry
itself; each an `Endpoint` (host, forced scheme, repository prefix). Pure.
"""

from __future__ import annotations

from pyenroot.errors import ConfigError
from pyenroot.record import record
from pyenroot.registry.uri import canonical_registry, is_registry_host


@record(frozen=True)
class Endpoint:
    """Where to send requests: host[:port], an optional forced scheme and a repository prefix (mirrors)."""

    host: str
    scheme: str | None = None
    prefix: str = ""


def parse_mirrors(text: str | None) -> dict[str, list[Endpoint]]:
    """`REGISTRY=MIRROR[,MIRROR...];...` where MIRROR is `[http[s]://]HOST[:PORT][/PREFIX]`.

    A mirror written with `http://` is used over plain HTTP even without ENROOT_ALLOW_HTTP: the site's
    configuration chose it. PREFIX is put before the repository (proxy caches that serve several registries).
    """
    mirrors: dict[str, list[Endpoint]] = {}
    for item in (text or "").split(";"):
        if not item.strip():
            continue
        registry, sep, targets = item.partition("=")
        if not sep or not registry.strip() or not targets.strip():
            raise ConfigError(f"PYENROOT_REGISTRY_MIRRORS: {item.strip()!r} is not REGISTRY=MIRROR[,MIRROR...]")
        endpoints = [_mirror_endpoint(t.strip()) for t in targets.split(",") if t.strip()]
        mirrors.setdefault(canonical_registry(registry.strip()), []).extend(endpoints)
    return mirrors


def _mirror_endpoint(text: str) -> Endpoint:
    scheme = None
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme not in ("http", "https"):
            raise ConfigError(f"PYENROOT_REGISTRY_MIRRORS: unsupported scheme in {scheme}://{text}")
    host, _, prefix = text.partition("/")
    if not host:
        raise ConfigError(f"PYENROOT_REGISTRY_MIRRORS: no host in {text!r}")
    if not is_registry_host(host):
        raise ConfigError(f"PYENROOT_REGISTRY_MIRRORS: {host!r} is not a HOST[:PORT]")
    return Endpoint(host.lower(), scheme, prefix.strip("/"))


def endpoints_for(registry: str, mirrors: dict[str, list[Endpoint]]) -> list[Endpoint]:
    """The mirrors of `registry` in order, then the registry itself."""
    return [*mirrors.get(canonical_registry(registry), []), Endpoint(registry)]
