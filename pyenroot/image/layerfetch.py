"""The layers of an image, fetched in the background (top layer first) while the merge consumes them, and
stopped at once when the import ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pyenroot.config import Settings
from pyenroot.content.blobs import BlobCache
from pyenroot.content.model import ImageSource, LocalLayer, ResolvedImage
from pyenroot.image.progress import ImportProgress


class LayerFetch:
    """The layers of an image, fetched in the background, top layer first, while the merge consumes them.

    A source with `fetch_blob` (the registry) gets one task per blob, so the merge of the top layer starts
    as soon as that blob is verified in the cache; other sources fetch everything first.
    """

    def __init__(self, source: ImageSource, image: ResolvedImage, progress: ImportProgress, connections: int):
        self.progress = progress
        self.pool: ThreadPoolExecutor | None = None
        self._started = time.monotonic()
        self._remaining = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reporter = _Stoppable(progress, self._stop)
        fetch_blob = getattr(source, "fetch_blob", None)
        if fetch_blob is None:
            self.layers: list[LocalLayer | Future] = list(source.fetch_layers(image, progress))
            self._summary(image.layers)
            return
        tasks: dict[str, Future] = {}
        workers = min(connections if connections > 0 else len(image.layers), len(image.layers)) or 1
        for descriptor in image.layers:  # the whole size from the start, so that the time left is right at once
            progress.advance(descriptor.digest, 0, descriptor.size if descriptor.size > 0 else None)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="layer")
        for descriptor in reversed(image.layers):  # the merge reads the top layer first
            if descriptor.digest not in tasks:
                tasks[descriptor.digest] = self.pool.submit(self._fetch, fetch_blob, descriptor)
        self._remaining = len(tasks)
        self._tasks = list(tasks.values())
        self.layers = [tasks[d.digest] for d in image.layers]
        for task in self._tasks:  # a task already done runs its callback at once
            task.add_done_callback(lambda done: self._done(image.layers))

    def _fetch(self, fetch_blob, descriptor) -> LocalLayer:
        path = Path(fetch_blob(descriptor, self._reporter))
        if descriptor.size > 0:  # complete also when it came from the cache, which reports nothing
            self.progress.advance(descriptor.digest, descriptor.size, descriptor.size)
        return LocalLayer(descriptor, path)

    def _done(self, descriptors) -> None:
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last and all(not t.cancelled() and t.exception() is None for t in self._tasks):
            self._summary(descriptors)

    def _summary(self, descriptors) -> None:
        self.progress.record("download", time.monotonic() - self._started)
        total = sum(d.size for d in descriptors if d.size and d.size > 0)
        self.progress.note(f"{len(descriptors)} layers, {total / (1 << 20):.1f} MB")

    def close(self) -> None:
        """Stop at once: downloads not started are dropped, running ones end at their next progress report
        (Python waits for the pool's threads before it exits, so a SIGTERM would otherwise wait for them).
        When every download is over, the pool's threads are joined: a start in this process (a Slurm step's)
        can only enter new namespaces without them."""
        self._stop.set()
        if self.pool is not None:
            self.pool.shutdown(wait=all(task.done() for task in self._tasks), cancel_futures=True)


class DownloadStopped(BaseException):
    """Ends a download thread once the import is over; a BaseException so that no retry or mirror fallback
    (`except ImageError`, `except Exception`) takes it for a failed transfer. The blob's cache write unwinds
    and removes its temporary file."""


class _Stoppable:
    """The progress reporter a download sees: it reports every few MiB, and raises once the import is over."""

    def __init__(self, progress: ImportProgress, stop: threading.Event):
        self._progress = progress
        self._stop = stop

    def advance(self, item: str, done: int, total: int | None) -> None:
        if self._stop.is_set():
            raise DownloadStopped()
        self._progress.advance(item, done, total)

    def __getattr__(self, name: str):
        return getattr(self._progress, name)


def start_layer_fetch(source: ImageSource, arch: str | None, settings: Settings, progress: ImportProgress,
                      hold: contextlib.ExitStack,
                      image: ResolvedImage | None = None) -> tuple[ResolvedImage, LayerFetch]:
    """Resolve (unless done) and start fetching the layers, which stay marked in use until `hold` closes."""
    if image is None:
        progress.phase("resolve")
        image = source.resolve(arch)
    progress.phase("merge")
    hold.enter_context(BlobCache.of(settings).reading(d.digest for d in image.layers))
    return image, LayerFetch(source, image, progress, settings.integer("ENROOT_MAX_CONNECTIONS"))

