"""Image URIs: enroot's `docker://` grammar plus podman, dockerd and archive sources, parsed into an `ImageRef`.

Pure: no network, no files. Docker Hub names are canonicalised here (registry and `library/`).
"""

from __future__ import annotations

import re

from pyenroot.errors import UsageError
from pyenroot.record import record

DOCKER_HUB = "registry-1.docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
SCHEMES = ("docker", "podman", "dockerd", "oci-archive", "docker-archive")

GRAMMAR = (
    "docker://[USER@][REGISTRY#]IMAGE[:TAG][@sha256:DIGEST], podman://IMAGE[:TAG], dockerd://IMAGE[:TAG], "
    "oci-archive://PATH[:REF] or docker-archive://PATH"
)

# Character classes after enroot's, narrowed where enroot's were accidental: a user name may not hold
# `/`, `#` or `@` (they would make the URI ambiguous), a tag follows Docker's tag rule. A docker:// URI is read
# field by field (digest, user, registry, image, tag) so that an error names the field that is wrong.
# The patterns of the rarer forms stay strings, compiled (and cached by re) at their first use, not at import.
_USER = r"[A-Za-z0-9_.!~*'()%;:&=+$,<>?-]+"
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
TAG_MAX_LENGTH = 128
# Local engines: IMAGE[:TAG] where IMAGE may carry a registry host (with a port) and a path.
_ENGINE_FORM = (r"^(?P<image>[A-Za-z0-9._-]+(?::[0-9]+)?(?:/[A-Za-z0-9._-]+)*)(?::(?P<tag>[A-Za-z0-9_.-]+))?"
                r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$")


@record(frozen=True)
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


def pinned_identity(ref: ImageRef) -> tuple[str, str] | None:
    """(the digest, the provenance URI) of a registry reference pinned by digest, which the built-image cache is
    keyed by: known without asking the registry (None for a tag, or another scheme)."""
    return (ref.digest, ref.canonical()) if ref.scheme == "docker" and ref.digest else None


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


def _docker_ref(registry: str, image: str, tag: str | None, digest: str | None, user: str | None) -> ImageRef:
    registry = canonical_registry(registry)
    if registry == DOCKER_HUB and "/" not in image:
        image = f"library/{image}"
    if not tag and not digest:
        tag = "latest"
    return ImageRef("docker", repository=image, registry=registry, tag=tag, digest=digest, user=user)


def _check_characters(uri: str, rest: str) -> None:
    """Blanks and control characters first: a pasted URI often carries a trailing space or newline."""
    if rest != rest.rstrip():
        raise _invalid(uri, "trailing whitespace")
    if rest != rest.lstrip():
        raise _invalid(uri, "leading whitespace")
    if any(c.isspace() for c in rest):
        raise _invalid(uri, "it contains whitespace")
    if not rest.isprintable():
        raise _invalid(uri, "it contains a control character")
    if not rest:
        raise _invalid(uri, "nothing after docker://")


def _split_digest(uri: str, rest: str) -> tuple[str, str | None]:
    """Take a trailing `@sha256:HEX` off first, so that it is never mistaken for `USER@`."""
    head, sep, tail = rest.rpartition("@")
    if not sep or not tail.startswith("sha256:"):
        return rest, None
    if not re.fullmatch(r"sha256:[a-f0-9]{64}", tail):
        raise _invalid(uri, f"invalid digest {tail!r}: a digest is sha256: and 64 lower-case hex digits")
    return head, tail


def _split_user(uri: str, rest: str) -> tuple[str | None, str]:
    user, sep, tail = rest.partition("@")
    if not sep:
        return None, rest
    if "@" in tail:
        raise _invalid(uri, "more than one '@' (USER@ comes first, @sha256:DIGEST last)")
    if not user:
        raise _invalid(uri, "empty user name before '@'")
    if not re.fullmatch(_USER, user):
        raise _invalid(uri, f"invalid user name {user!r}")
    return user, tail


def _split_registry(uri: str, rest: str) -> tuple[str, str]:
    """REGISTRY#PATH (enroot's form, the registry needs no dot), FIRST/PATH where FIRST is a registry only if
    it holds a `.` or `:` (else a Docker Hub namespace), or a Docker Hub PATH."""
    if "#" in rest:
        registry, _, path = rest.partition("#")
        if "#" in path:
            raise _invalid(uri, "more than one '#' (REGISTRY#IMAGE)")
        if not registry:
            raise _invalid(uri, "empty registry before '#'")
    else:
        first, sep, path = rest.partition("/")
        if not sep or ("." not in first and ":" not in first):
            return DOCKER_HUB, rest
        registry = first
    if not is_registry_host(registry):
        raise _invalid(uri, f"{registry!r} is not a registry host[:port]")
    return registry, path


def _split_tag(uri: str, path: str) -> tuple[str, str | None]:
    image, sep, tag = path.partition(":")
    if not sep:
        return image, None
    if not tag:
        raise _invalid(uri, "empty tag after ':'")
    if len(tag) > TAG_MAX_LENGTH:
        raise _invalid(uri, f"invalid tag {tag[:20]!r}...: longer than {TAG_MAX_LENGTH} characters")
    if not _TAG.fullmatch(tag):
        raise _invalid(uri, f"invalid tag {tag!r}: a tag holds letters, digits, '_', '.' and '-' "
                            "and does not start with '.' or '-'")
    return image, tag


def _check_image(uri: str, image: str) -> None:
    if not image:
        raise _invalid(uri, "no image name")
    for part in image.split("/"):
        if not part:
            raise _invalid(uri, f"empty part in image name {image!r}")
        if not _COMPONENT.fullmatch(part.lower()):
            raise _invalid(uri, f"invalid image name part {part!r}: each part of an image name starts and ends "
                                "with a letter or digit and holds only letters, digits, '.', '_' and '-'")
        if part != part.lower():
            raise _invalid(uri, f"image names are lower case: {image!r}")


def _parse_docker(uri: str, rest: str) -> ImageRef:
    _check_characters(uri, rest)
    rest, digest = _split_digest(uri, rest)
    user, rest = _split_user(uri, rest)
    registry, path = _split_registry(uri, rest)
    image, tag = _split_tag(uri, path)
    _check_image(uri, image)
    return _docker_ref(registry, image, tag, digest, user)


def _parse_engine(uri: str, scheme: str, rest: str) -> ImageRef:
    match = re.match(_ENGINE_FORM, rest)
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


def _docker_guess(text: str) -> str | None:
    """The docker:// URI that an http(s):// URL or a scheme-less name most likely meant, if it parses."""
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        return None
    rest = rest if sep else text
    first, slash, path = rest.strip().partition("/")
    registry_given = sep or "." in first or ":" in first
    if sep and not path.strip("/"):
        return None  # a URL of a bare host names no image
    guess = f"docker://{first}#{path.strip('/')}" if slash and registry_given else f"docker://{rest.strip()}"
    try:
        _parse_docker(guess, guess[len("docker://"):])
    except UsageError:
        return None
    return guess


def _scheme_error(text: str, scheme: str | None) -> UsageError:
    """No scheme or one we do not know: suggest the docker:// URI meant, and plain HTTP where it may be one."""
    why = f"unknown scheme {scheme + '://'!r}" if scheme is not None else "no scheme"
    guess = _docker_guess(text)
    if guess is None:
        return _invalid(text, why)
    hint = f"did you mean {guess}?"
    if scheme is None or scheme.lower() == "http":
        hint += " (docker:// speaks HTTPS; a plain-HTTP registry also needs ENROOT_ALLOW_HTTP=yes)"
    return UsageError(f"invalid image reference {text!r} ({why})", hint=hint)


def parse_uri(text: str) -> ImageRef:
    """Parse an image URI; raise UsageError saying which part is wrong, with the accepted grammar or the
    docker:// URI that was most likely meant as the hint."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise _scheme_error(text, scheme if sep else None)
    if scheme == "docker":
        return _parse_docker(text, rest)
    if scheme in ("podman", "dockerd"):
        return _parse_engine(text, scheme, rest)
    return _parse_archive(text, scheme, rest)
