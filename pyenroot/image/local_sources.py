"""Image sources on this machine, other than registries (those are registry/source.py): OCI layout archives,
`docker save` archives, podman's store and the docker daemon (both exported to an archive first). Layers go
into the blob cache, verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pyenroot import tools
from pyenroot.content.blobs import BlobCache
from pyenroot.content.model import Descriptor, LocalLayer, ProgressReporter, ResolvedImage
from pyenroot.errors import ImageError, UsageError
from pyenroot.registry.manifest import sha256_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
REF_NAME = "org.opencontainers.image.ref.name"
_CHUNK = 1 << 20
_LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
                "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
                "none": "application/vnd.oci.image.layer.v1.tar"}


def _member_name(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading, if it is a regular file: a device (/dev/zero) or a FIFO would be read forever
    or block, so they are refused before any byte is read (O_NONBLOCK: opening a FIFO does not wait)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"is a directory: {path}") from None
    except PermissionError:
        raise ImageError(f"permission denied: {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot open {path}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        os.close(fd)
        raise ImageError(f"is a directory: {path}")
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImageError(f"not a regular file: {path}", hint="archives are read from regular files")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


class _Archive:
    """Random access to the members of an (uncompressed or compressed) tar file."""

    def __init__(self, path: Path, what: str):
        self.path = path
        self.what = what
        self.file = _open_regular(path)
        try:
            self.tar = tarfile.open(fileobj=self.file, mode="r:*")  # noqa: SIM115 - closed by close()
            self.members = {_member_name(m.name): m for m in self.tar.getmembers() if m.isfile()}
        except tarfile.ReadError:
            self.file.close()
            raise ImageError(f"not a tar archive: {path}", hint=f"expected a {what}") from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            self.file.close()
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ImageError(f"{path} is not a valid {what}: {detail}") from None

    def close(self) -> None:
        self.tar.close()
        self.file.close()

    def member(self, name: str) -> tarfile.TarInfo:
        info = self.members.get(_member_name(name))
        if info is None:
            raise ImageError(f"{self.path}: invalid {self.what}: {name} is missing")
        return info

    def read(self, name: str) -> bytes:
        handle = self.tar.extractfile(self.member(name))
        assert handle is not None
        return handle.read()

    def json(self, name: str) -> object:
        try:
            return json.loads(self.read(name))
        except ValueError as exc:
            raise ImageError(f"{self.path}: invalid {self.what}: {name}: {exc}") from None

    def chunks(self, name: str) -> Iterator[bytes]:
        handle = self.tar.extractfile(self.member(name))
        assert handle is not None
        while chunk := handle.read(_CHUNK):
            yield chunk


def _sha256_of(chunks: Iterator[bytes]) -> str:
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def _compression_of(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    return "zstd" if head.startswith(b"\x28\xb5\x2f\xfd") else "none"


def _blob_name(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256" or not hexpart or "/" in hexpart:
        raise ImageError(f"unsupported digest {digest!r}")
    return f"blobs/sha256/{hexpart}"


def _platform_matches(platform: dict | None, arch: str | None) -> bool:
    if not platform:
        return True
    from pyenroot.registry.manifest import normalize_platform

    wanted = normalize_platform(arch)
    return platform.get("architecture") == wanted.architecture and platform.get("os", "linux") == wanted.os


class _ArchiveSource:
    """What both archive formats share: the open archive, and copying layer members into the blob cache."""

    scheme = ""
    kind = ""

    def __init__(self, path: Path, cache: BlobCache, *, ref: str | None = None, uri: str | None = None):
        self.path = path
        self.ref = ref
        self.cache = cache
        self.uri = uri or f"{self.scheme}://{path}"
        self.archive = _Archive(path, self.kind)

    def close(self) -> None:
        self.archive.close()

    def _layer_member(self, layer: Descriptor) -> str:
        raise NotImplementedError

    def fetch_layers(self, image: ResolvedImage, progress: ProgressReporter | None = None) -> list[LocalLayer]:
        result = []
        for layer in image.layers:
            if not self.cache.has(layer.digest):
                with self.cache.locked(layer.digest):
                    if not self.cache.has(layer.digest):
                        chunks = self.archive.chunks(self._layer_member(layer))
                        self.cache.store(layer.digest, chunks, layer.size)
            result.append(LocalLayer(layer, self.cache.path(layer.digest)))
            if progress:
                progress.advance(layer.digest, max(layer.size, 0), max(layer.size, 0))
        return result


class OciArchiveSource(_ArchiveSource):
    """`oci-archive://PATH[:REF]`: a tar of an OCI image layout (index.json, blobs/sha256/...)."""

    scheme, kind = "oci-archive", "OCI archive"

    def _layer_member(self, layer: Descriptor) -> str:
        return _blob_name(layer.digest)

    def _select(self, manifests: list[dict], arch: str | None) -> dict:
        if self.ref:
            named = [m for m in manifests if (m.get("annotations") or {}).get(REF_NAME) in (self.ref,)
                     or (m.get("annotations") or {}).get(REF_NAME, "").endswith(f":{self.ref}")]
            if not named:
                raise ImageError(f"{self.path}: no image named {self.ref!r} in the archive")
            manifests = named
        candidates = [m for m in manifests if _platform_matches(m.get("platform"), arch)]
        if not candidates:
            offered = sorted({f"{m['platform'].get('os')}/{m['platform'].get('architecture')}"
                              for m in manifests if m.get("platform")})
            raise ImageError(f"{self.path}: no image for this platform in the archive",
                             hint=f"available: {', '.join(offered) or 'none'}; choose one with --arch")
        return candidates[0]

    def resolve(self, arch: str | None) -> ResolvedImage:
        document = self.archive.json("index.json")
        for _ in range(8):  # nested indexes, bounded
            manifests = document.get("manifests") if isinstance(document, dict) else None
            if not manifests:
                raise ImageError(f"{self.path}: invalid OCI archive: an index lists no manifests")
            chosen = self._select(manifests, arch)
            blob = self.archive.read(_blob_name(chosen["digest"]))
            if sha256_digest(blob) != chosen["digest"]:
                raise ImageError(f"{self.path}: manifest {chosen['digest']} does not match its digest")
            document = json.loads(blob)
            if chosen.get("mediaType") not in (OCI_INDEX, DOCKER_LIST) and "manifests" not in document:
                return self._image(chosen["digest"], document)
            self.ref = None  # a ref name selects at the top level only
        raise ImageError(f"{self.path}: image indexes nested too deeply")

    def _image(self, digest: str, manifest: dict) -> ResolvedImage:
        try:
            config_digest = manifest["config"]["digest"]
            layers = [Descriptor(entry.get("mediaType", ""), entry["digest"], int(entry.get("size", -1)))
                      for entry in manifest["layers"]]
        except (KeyError, TypeError, ValueError):
            raise ImageError(f"{self.path}: invalid OCI archive: malformed manifest {digest}") from None
        config_bytes = self.archive.read(_blob_name(config_digest))
        if sha256_digest(config_bytes) != config_digest:
            raise ImageError(f"{self.path}: config {config_digest} does not match its digest")
        return ResolvedImage(self.uri, digest, json.loads(config_bytes), layers)


class DockerArchiveSource(_ArchiveSource):
    """`docker-archive://PATH`: the tar `docker save` writes (manifest.json, config, one tar per layer)."""

    scheme, kind = "docker-archive", "docker archive"

    def __init__(self, path: Path, cache: BlobCache, *, ref: str | None = None, uri: str | None = None):
        super().__init__(path, cache, ref=ref, uri=uri)
        self._layer_members: dict[str, str] = {}

    def _layer_member(self, layer: Descriptor) -> str:
        return self._layer_members[layer.digest]

    def _entry(self) -> dict:
        entries = self.archive.json("manifest.json")
        if not isinstance(entries, list) or not entries:
            raise ImageError(f"{self.path}: invalid docker archive: manifest.json lists no image")
        if self.ref:
            for entry in entries:
                tags = entry.get("RepoTags") or []
                if self.ref in tags or any(t.endswith(f"/{self.ref}") or t.split("/")[-1] == self.ref for t in tags):
                    return entry
            raise ImageError(f"{self.path}: no image tagged {self.ref!r} in the archive")
        return entries[0]

    def resolve(self, arch: str | None) -> ResolvedImage:
        entry = self._entry()
        try:
            config_name, layer_names = entry["Config"], list(entry["Layers"])
        except (KeyError, TypeError):
            raise ImageError(f"{self.path}: invalid docker archive: malformed manifest.json") from None
        config_bytes = self.archive.read(config_name)
        config = json.loads(config_bytes)
        diff_ids = ((config.get("rootfs") or {}).get("diff_ids")) or []
        layers = []
        for index, name in enumerate(layer_names):
            info = self.archive.member(name)
            digest = self._digest_of(name, diff_ids[index] if index < len(diff_ids) else None)
            kind = _compression_of(next(self.archive.chunks(name), b"")[:4])
            layers.append(Descriptor(_LAYER_TYPES[kind], digest, info.size))
            self._layer_members[digest] = name
        manifest_digest = sha256_digest(config_bytes)
        return ResolvedImage(self.uri, manifest_digest, config, layers)

    def _digest_of(self, name: str, diff_id: str | None) -> str:
        parts = _member_name(name).split("/")
        if len(parts) == 3 and parts[:2] == ["blobs", "sha256"]:
            return f"sha256:{parts[2]}"  # docker 25+ writes an OCI layout: the name is the digest
        if diff_id and self.cache.has(diff_id):
            return diff_id
        return _sha256_of(self.archive.chunks(name))


# ------------------------------------------------------------------------------------ engines


def engine_save_argv(engine: str, image: str, output: Path) -> list[str]:
    """The command that exports IMAGE from a local engine to an archive we can read."""
    if engine == "podman":
        return ["podman", "save", "--format", "oci-archive", "--output", str(output), image]
    if engine == "dockerd":
        return ["docker", "save", "--output", str(output), image]
    raise ValueError(engine)


def save_from_engine(engine: str, image: str, directory: Path) -> Path:
    """Run `podman save` / `docker save` into a fresh file below `directory`; return its path."""
    fd, name = tempfile.mkstemp(prefix=f"{engine}-save-", suffix=".tar", dir=directory)
    os.close(fd)
    output = Path(name)
    os.unlink(output)  # podman refuses to overwrite an existing file
    argv = engine_save_argv(engine, image, output)
    result = tools.run(argv, stdout=tools.DEVNULL,
                       hint=f"{engine}:// images are read through the {argv[0]} command")
    if result.returncode != 0:
        output.unlink(missing_ok=True)
        message = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise ImageError(f"{argv[0]} save {image}: {message}")
    return output
