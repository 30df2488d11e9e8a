"""The registry as an image source: resolve a `docker://` reference to one platform's image, fetch its blobs.

Mirrors are tried in order before the origin. Blobs land verified in the BlobCache; a cached blob costs
no request, and concurrent processes download each blob once (per-digest lock).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from pyenroot.config import Settings
from pyenroot.content.blobs import BlobCache
from pyenroot.content.model import Descriptor, LocalLayer, ProgressReporter, ResolvedImage
from pyenroot.errors import ImageError, PyenrootError, RegistryError, UsageError
from pyenroot.registry.auth import Credentials, find_credentials
from pyenroot.registry.client import RegistryClient, TransferInterrupted, retry_delay
from pyenroot.registry.endpoints import Endpoint, endpoints_for, parse_mirrors
from pyenroot.registry.manifest import (
    Index,
    Manifest,
    Platform,
    check_layers,
    normalize_platform,
    parse_config,
    parse_manifest,
    select_platform,
    sha256_digest,
    verify_digest,
)
from pyenroot.registry.session import TransferOptions, transports_for
from pyenroot.registry.uri import ImageRef, pinned_identity

TYPE_CHECKING = False  # typing's flag without importing typing (a Slurm step imports as little as it can)

if TYPE_CHECKING:
    from typing import TypeVar

    import requests

    T = TypeVar("T")
MAX_INDEX_DEPTH = 4
MAX_CONFIG = 16 << 20  # the config is read into memory; real ones are a few kB
PROGRESS_STEP = 4 << 20  # report at most every 4 MiB per blob


class RegistrySource:
    """An `ImageSource` for `docker://` references."""

    def __init__(self, ref: ImageRef, settings: Settings, session: requests.Session | None = None, *,
                 environ: Mapping[str, str] | None = None, sleep: Callable[[float], None] = time.sleep):
        if ref.scheme != "docker" or not ref.registry:
            raise UsageError(f"not a registry reference: {ref.canonical()}")
        self.ref = ref
        self.settings = settings
        self.options = TransferOptions.from_settings(settings)
        self._environ = dict(os.environ if environ is None else environ)
        # Short requests over http.client unless a proxy needs requests; blobs over requests, made when needed.
        self.transports = transports_for(self.options, session, self._environ)
        self.cache = BlobCache.of(settings)
        self._sleep = sleep
        config = settings.get("ENROOT_CONFIG_PATH")
        self._config_path = Path(config) if config else None
        mirrors = parse_mirrors(settings.get("PYENROOT_REGISTRY_MIRRORS"))
        self.clients = [self._client(endpoint) for endpoint in endpoints_for(ref.registry, mirrors)]

    def _client(self, endpoint: Endpoint) -> RegistryClient:
        origin = endpoint.host == self.ref.registry
        where = self._config_path / ".credentials" if self._config_path else "$ENROOT_CONFIG_PATH/.credentials"
        hint = (f"put credentials for {endpoint.host} in {where} "
                f"(machine {endpoint.host.split(':')[0]} login USER password PASSWORD, mode 0600)")
        return RegistryClient(endpoint, self.ref.repository, transports=self.transports, options=self.options,
                              credentials=self._credentials_for, credentials_hint=hint,
                              user=self.ref.user if origin else None, sleep=self._sleep)

    def _credentials_for(self, host: str) -> Credentials | None:
        user = self.ref.user if host == self.ref.registry else None
        return find_credentials(host, user, self._config_path, self._environ)

    # ---- resolve --------------------------------------------------------------------------------------------

    def _each_endpoint(self, action: Callable[[RegistryClient], T]) -> T:
        """Run `action` against the mirrors then the origin; the first success wins, and its client moves
        to the front so that blobs come from where the manifest came from."""
        errors: list[PyenrootError] = []
        for client in list(self.clients):
            try:
                result = action(client)
            except (RegistryError, ImageError) as error:
                errors.append(error)
                continue
            if client is not self.clients[0]:
                self.clients.remove(client)
                self.clients.insert(0, client)
            return result
        raise errors[-1]  # the origin's error: mirrors are an optimisation

    def _resolve_manifest(self, client: RegistryClient, platform: Platform) -> tuple[Manifest, str, str]:
        """(the platform's manifest, its digest, the digest of the document the reference names)."""
        data, content_type = client.get_manifest(self.ref.reference)
        digest = top = sha256_digest(data)
        if self.ref.digest:
            verify_digest(data, self.ref.digest, f"manifest {self.ref.canonical()}")
        document = parse_manifest(data, content_type)
        depth = 0
        while isinstance(document, Index):
            depth += 1
            if depth > MAX_INDEX_DEPTH:
                raise ImageError(f"image index of {self.ref.canonical()} nested too deeply")
            entry = select_platform(document, platform)
            data, content_type = client.get_manifest(entry.digest)
            verify_digest(data, entry.digest, f"manifest {entry.digest}")
            document = parse_manifest(data, content_type or entry.media_type)
            digest = entry.digest
        check_layers(document)
        return document, digest, top

    def manifest_digest(self, arch: str | None) -> str:
        """The digest of the platform's manifest (what `digest` prints)."""
        platform = normalize_platform(arch)
        return self._each_endpoint(lambda c: self._resolve_manifest(c, platform)[1])

    def identity(self) -> tuple[str, str]:
        """(the digest the reference resolves to, the provenance URI): what the built-image cache is keyed by.
        One manifest request for a tag; none for a digest-pinned reference."""
        pinned = pinned_identity(self.ref)
        if pinned is not None:
            return pinned
        digest = self._each_endpoint(lambda c: sha256_digest(c.get_manifest(self.ref.reference)[0]))
        return digest, self.ref.canonical()

    def resolve(self, arch: str | None) -> ResolvedImage:
        platform = normalize_platform(arch)

        def attempt(client: RegistryClient) -> ResolvedImage:
            manifest, digest, top = self._resolve_manifest(client, platform)
            if manifest.config.size > MAX_CONFIG:
                raise ImageError(f"image config of {self.ref.canonical()} is {manifest.config.size} bytes, "
                                 f"more than the {MAX_CONFIG} accepted")
            with self.cache.reading([manifest.config.digest]):  # `cache prune` leaves it alone meanwhile
                config = parse_config(self._fetch_into_cache(manifest.config, [client]).read_bytes())
            return ResolvedImage(source_uri=self.ref.canonical(), manifest_digest=digest, config=config,
                                 layers=list(manifest.layers), reference_digest=top)

        return self._each_endpoint(attempt)

    # ---- blobs ----------------------------------------------------------------------------------------------

    def fetch_layers(self, image: ResolvedImage, progress: ProgressReporter | None = None) -> list[LocalLayer]:
        """Every layer verified in the cache, bottom first; only missing blobs are downloaded, in parallel."""
        missing: dict[str, Descriptor] = {}
        for layer in image.layers:
            if not self.cache.has(layer.digest):
                missing.setdefault(layer.digest, layer)
        if missing:
            from concurrent.futures import ThreadPoolExecutor

            workers = self.options.max_connections or len(missing)
            with ThreadPoolExecutor(max_workers=min(workers, len(missing)), thread_name_prefix="blob") as pool:
                futures = [pool.submit(self.fetch_blob, d, progress) for d in missing.values()]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    # Fail fast: downloads not started yet are dropped, running ones finish or fail on their own.
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        return [LocalLayer(layer, self.cache.path(layer.digest)) for layer in image.layers]

    def fetch_blob(self, descriptor: Descriptor, progress: ProgressReporter | None = None) -> Path:
        """One blob into the cache (no request when already there), from the endpoints in order."""
        return self._fetch_into_cache(descriptor, self.clients, progress)

    def _fetch_into_cache(self, descriptor: Descriptor, clients: list[RegistryClient],
                          progress: ProgressReporter | None = None) -> Path:
        digest = descriptor.digest
        if self.cache.has(digest):
            return self.cache.path(digest)
        with self.cache.locked(digest):
            # Whoever held the lock before us may have stored it; a killed one may have left part of it.
            if self.cache.has(digest):
                return self.cache.path(digest)
            partial = self.cache.take_partial(digest)
            errors: list[PyenrootError] = []
            for client in clients:
                try:
                    return self._download(client, descriptor, progress, partial)
                except ImageError as error:
                    if partial is None:
                        errors.append(error)
                        continue
                    # The bytes a killed process left did not add up (the cache removed them): start over.
                    partial = None
                    try:
                        return self._download(client, descriptor, progress, None)
                    except (RegistryError, ImageError) as again:
                        errors.append(again)
                except RegistryError as error:
                    # A mirror that fails is skipped; the origin's error is the one reported.
                    errors.append(error)
                partial = self.cache.take_partial(digest)  # what an interrupted attempt left, if anything
            raise errors[-1]

    def _download(self, client: RegistryClient, descriptor: Descriptor, progress: ProgressReporter | None,
                  resume: Path | None) -> Path:
        offset = resume.stat().st_size if resume is not None else 0
        size = descriptor.size if descriptor.size >= 0 else None
        chunks = self._reporting(self._resumed(client, descriptor.digest, offset, size), descriptor, progress, offset)
        return self.cache.store(descriptor.digest, chunks, size, resume=resume)

    def _resumed(self, client: RegistryClient, digest: str, offset: int, size: int | None) -> Iterator[bytes]:
        """The blob's bytes from `offset` on; an interrupted transfer is resumed where it stopped (up to the
        retry limit), so a reset near the end of a large layer does not cost the whole layer again. A digest
        mismatch is the cache's verdict on the whole stream and is never retried here."""
        received, attempt = offset, 0
        while size is None or received < size:
            try:
                for chunk in client.blob_chunks(digest, offset=received):
                    received += len(chunk)
                    yield chunk
                return
            except TransferInterrupted:
                if attempt >= self.options.retries:
                    raise
                self._sleep(retry_delay(None, attempt))
                attempt += 1

    @staticmethod
    def _reporting(chunks: Iterator[bytes], descriptor: Descriptor, progress: ProgressReporter | None,
                   done: int = 0) -> Iterator[bytes]:
        if progress is None:
            yield from chunks
            return
        reported = done
        total = descriptor.size if descriptor.size >= 0 else None
        for chunk in chunks:
            done += len(chunk)
            if done - reported >= PROGRESS_STEP:
                progress.advance(descriptor.digest, done, total)
                reported = done
            yield chunk
        progress.advance(descriptor.digest, done, total)

    def blob_stream(self, descriptor: Descriptor) -> Iterator[bytes]:
        """A blob straight from the network (not cached), verified when the stream ends: the consumer must
        read to the end and treat the ImageError raised there as fatal. From the cache when it is there."""
        if self.cache.has(descriptor.digest):
            with open(self.cache.path(descriptor.digest), "rb") as blob:
                yield from iter(lambda: blob.read(1 << 20), b"")
            return
        hasher = hashlib.sha256()
        for chunk in self.clients[0].blob_chunks(descriptor.digest):
            hasher.update(chunk)
            yield chunk
        actual = "sha256:" + hasher.hexdigest()
        if actual != descriptor.digest:
            raise ImageError(f"digest mismatch for blob {descriptor.digest}: got {actual}")
