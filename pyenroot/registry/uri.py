"""Image URIs: enroot's `docker://` grammar plus podman, dockerd and archive sources, parsed into an `ImageRef`.

Pure: no network, no files. Docker Hub names are canonicalised here (registry and `library/`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyenroot.errors import UsageError

DOCKER_HUB = "registry-1.docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
SCHEMES = ("docker", "podman", "dockerd", "oci-archive", "docker-archive")

GRAMMAR = (
    "docker://[USER@][REGISTRY#]IMAGE[:TAG][@sha256:DIGEST], podman://IMAGE[:TAG], dockerd://IMAGE[:TAG], "
    "oci-archive://PATH[:REF] or docker-archive://PATH"
)

# Character classes after enroot's, narrowed where enroot's were accidental: a user name may not hold
# `/`, `#` or `@` (they would make the URI ambiguous), a tag follows Docker's tag rule.
_USER = r"(?:(?P<user>[A-Za-z0-9_.!~*'()%;:&=+$,<>?-]+)@)?"
_IMAGE = r"(?P<image>[a-z0-9._-]+(?:/[a-z0-9._-]+)*)"
_TAG = r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"

# enroot style: REGISTRY#IMAGE (the registry needs no dot).
_HASH_FORM = re.compile(rf"^{_USER}(?P<registry>[^#/@]+)#{_IMAGE}{_TAG}$")
# Docker style: FIRST/IMAGE where FIRST is a registry only if it has a `.` or `:` (else a Hub namespace).
_SLASH_FORM = re.compile(rf"^{_USER}(?P<first>[^/#@]+)/{_IMAGE}{_TAG}$")
# A single name: a Docker Hub official image.
_NAME_FORM = re.compile(rf"^{_USER}(?P<image>[a-z0-9._-]+){_TAG}$")
# Local engines: IMAGE[:TAG] where IMAGE may carry a registry host (with a port) and a path.
_ENGINE_FORM = re.compile(r"^(?P<image>[A-Za-z0-9._-]+(?::[0-9]+)?(?:/[A-Za-z0-9._-]+)*)(?::(?P<tag>[A-Za-z0-9_.-]+))?"
                          r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$")


@dataclass(frozen=True)
class ImageRef:
    """Where an image comes from. For registries: registry host, repository, tag and/or digest."""

    scheme: str
    repository: str = ""
    registry: str | None = None
    tag: str | None = None
    digest: str | None = None
    user: str | None = None
    path: str | None = None  # archives: the file; the optional `:REF` of an oci-archive is in `tag`

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when pinned (the tag is then informative only)."""
        return self.digest or self.tag or "latest"

    def canonical(self) -> str:
        """The provenance string written into images: `docker://REGISTRY#REPO:TAG[@DIGEST]`."""
        if self.scheme == "docker":
            text = f"docker://{self.registry}#{self.repository}"
            if self.tag:
                text += f":{self.tag}"
            return text + (f"@{self.digest}" if self.digest else "")
        if self.scheme in ("podman", "dockerd"):
            return f"{self.scheme}://{self.repository}" + (f":{self.tag}" if self.tag else "") + \
                (f"@{self.digest}" if self.digest else "")
        return f"{self.scheme}://{self.path}" + (f":{self.tag}" if self.tag else "")

    def default_image_name(self) -> str:
        """enroot's default image name: repository and tag with `/` and `:` mapped to `+`, no registry.

        Docker Hub's `library/` is left out; a digest takes the tag's place (`ubuntu+sha256:HEX`).
        """
        if self.scheme == "docker":
            repository = self.repository
            if self.registry == DOCKER_HUB and repository.startswith("library/"):
                repository = repository[len("library/"):]
            return f"{repository.replace('/', '+')}+{self.digest or self.tag or 'latest'}"
        if self.scheme in ("podman", "dockerd"):
            name = self.repository + (f":{self.tag}" if self.tag else "")
            return name.replace("/", "+").replace(":", "+")
        base = (self.path or "image").rstrip("/").rsplit("/", 1)[-1]
        base = re.sub(r"\.(tar|tar\.gz|tgz|oci|tar\.zst)$", "", base) or "image"
        if self.tag:
            base += f"+{self.tag}"
        return base.replace("/", "+").replace(":", "+")


def _invalid(uri: str, why: str = "") -> UsageError:
    detail = f" ({why})" if why else ""
    return UsageError(f"invalid image reference {uri!r}{detail}", hint=f"accepted forms: {GRAMMAR}")


def canonical_registry(registry: str) -> str:
    """Docker Hub's aliases all mean registry-1.docker.io; other names are kept as written (lower case)."""
    lowered = registry.lower()
    return DOCKER_HUB if lowered in DOCKER_HUB_ALIASES else lowered


# HOST[:PORT], HOST a DNS name, an IPv4 address or a bracketed IPv6 address (what an HTTP URL can hold).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_REGISTRY = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{{1,5}}))?")
# A repository path component starts and ends with a letter or digit (so never `.` or `..`).
_COMPONENT = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")


def is_registry_host(text: str) -> bool:
    """Whether `text` is a HOST[:PORT] that fits in a URL (a port from 1 to 65535)."""
    match = _REGISTRY.fullmatch(text)
    return bool(match) and (match["port"] is None or 0 < int(match["port"]) < 65536)


def _check_docker_names(uri: str, registry: str, image: str) -> None:
    if not is_registry_host(registry):
        raise _invalid(uri, f"{registry!r} is not a registry host[:port]")
    if not all(_COMPONENT.fullmatch(part) for part in image.split("/")):
        raise _invalid(uri, "each part of an image name starts and ends with a letter or digit")


def _docker_ref(registry: str, image: str, tag: str | None, digest: str | None, user: str | None) -> ImageRef:
    registry = canonical_registry(registry)
    if registry == DOCKER_HUB and "/" not in image:
        image = f"library/{image}"
    if not tag and not digest:
        tag = "latest"
    return ImageRef("docker", repository=image, registry=registry, tag=tag, digest=digest, user=user)


def _split_digest(uri: str, rest: str) -> tuple[str, str | None]:
    """Take a trailing `@sha256:HEX` off first, so that it is never mistaken for `USER@`."""
    head, sep, tail = rest.rpartition("@")
    if not sep or not tail.startswith("sha256:"):
        return rest, None
    if not re.fullmatch(r"sha256:[a-f0-9]{64}", tail):
        raise _invalid(uri, "a digest is sha256: and 64 lower-case hex digits")
    return head, tail


def _parse_docker(uri: str, rest: str) -> ImageRef:
    ref = _parse_docker_forms(uri, rest)
    _check_docker_names(uri, ref.registry or "", ref.repository)
    return ref


def _parse_docker_forms(uri: str, rest: str) -> ImageRef:
    rest, digest = _split_digest(uri, rest)
    if "#" in rest:
        match = _HASH_FORM.match(rest)
        if not match:
            raise _invalid(uri, "REGISTRY#IMAGE with a lower-case image name expected")
        g = match.groupdict()
        return _docker_ref(g["registry"], g["image"], g["tag"], digest, g["user"])
    match = _SLASH_FORM.match(rest)
    if match:
        g = match.groupdict()
        first = g["first"]
        if "." in first or ":" in first:
            return _docker_ref(first, g["image"], g["tag"], digest, g["user"])
        if first != first.lower():
            raise _invalid(uri, "image names are lower case")
        return _docker_ref(DOCKER_HUB, f"{first}/{g['image']}", g["tag"], digest, g["user"])
    match = _NAME_FORM.match(rest)
    if match:
        g = match.groupdict()
        return _docker_ref(DOCKER_HUB, g["image"], g["tag"], digest, g["user"])
    raise _invalid(uri)


def _parse_engine(uri: str, scheme: str, rest: str) -> ImageRef:
    match = _ENGINE_FORM.match(rest)
    if not match:
        raise _invalid(uri, f"{scheme}://IMAGE[:TAG] expected")
    return ImageRef(scheme, repository=match["image"], tag=match["tag"], digest=match["digest"])


def _parse_archive(uri: str, scheme: str, rest: str) -> ImageRef:
    if not rest or "\0" in rest:
        raise _invalid(uri, f"{scheme}://PATH expected")
    path, ref = rest, None
    if scheme == "oci-archive":
        # PATH:REF, where REF names one image of the layout; a colon inside a directory name stays in PATH.
        head, sep, tail = rest.rpartition(":")
        if sep and head and "/" not in tail and tail:
            path, ref = head, tail
    return ImageRef(scheme, path=path, tag=ref)


def parse_uri(text: str) -> ImageRef:
    """Parse an image URI; raise UsageError showing the accepted grammar when it is not one."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise _invalid(text, "unknown scheme" if sep else "no scheme")
    if scheme == "docker":
        return _parse_docker(text, rest)
    if scheme in ("podman", "dockerd"):
        return _parse_engine(text, scheme, rest)
    return _parse_archive(text, scheme, rest)
