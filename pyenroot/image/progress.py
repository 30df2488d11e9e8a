"""Progress of an import: a live per-layer line on a terminal, a few summary lines elsewhere (Slurm logs),
and with -v the time each phase took (resolve, download, merge, squash).
"""

from __future__ import annotations

import threading
import time
from typing import TextIO


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class ImportProgress:
    """A ProgressReporter. Thread-safe: downloads report from worker threads."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, verbose: int = 0,
                 clock=time.monotonic):
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.verbose = verbose
        self._clock = clock
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._phase_start = 0.0
        self.timings: list[tuple[str, float]] = []
        self._items: dict[str, tuple[int, int | None]] = {}
        self._last_draw = 0.0
        self._started = clock()
        self._converting: tuple[int, int] | None = None

    # ---------------------------------------------------------------------------- protocol

    def phase(self, name: str) -> None:
        with self._lock:
            self._close_phase()
            self._phase = name
            self._phase_start = self._clock()
            if self.tty:
                self._clear_line()
                self._write(f"[pyenroot] {name}...\n")
            self._items.clear()
            self._converting = None

    def advance(self, item: str, done: int, total: int | None) -> None:
        with self._lock:
            self._items[item] = (done, total)
            if not self.tty:
                return
            now = self._clock()
            finished = total is not None and done >= total
            if now - self._last_draw < 0.1 and not finished:
                return
            self._last_draw = now
            self._draw()

    # ------------------------------------------------------------------------------ extras

    def note(self, message: str) -> None:
        """A summary line, shown on terminals and in logs alike."""
        with self._lock:
            self._clear_line()
            self._write(f"[pyenroot] {message}\n")

    def warn(self, message: str) -> None:
        with self._lock:
            self._clear_line()
            self._write(f"pyenroot: warning: {message}\n")

    def converting(self, index: int, total: int) -> None:
        """The merge has reached layer `index` (0 = top) of `total`."""
        with self._lock:
            self._converting = (index, total)
            if self.tty:
                self._draw()

    def record(self, name: str, seconds: float) -> None:
        """A phase timed elsewhere (downloads overlap the merge and are timed by their own thread)."""
        with self._lock:
            self.timings.append((name, seconds))

    def finish(self) -> None:
        with self._lock:
            self._close_phase()
            self._clear_line()
            if self.verbose:
                order = {"resolve": 0, "download": 1, "merge": 2, "squash": 3}
                timings = sorted(self.timings, key=lambda item: order.get(item[0], 9))
                parts = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in timings)
                overlap = "; downloads overlap the merge" if any(name == "download" for name, _ in timings) else ""
                self._write(f"[pyenroot] time: {parts} (total {self._clock() - self._started:.2f}s{overlap})\n")

    # ----------------------------------------------------------------------------- drawing

    def _close_phase(self) -> None:
        if self._phase is not None:
            self.timings.append((self._phase, self._clock() - self._phase_start))
            self._phase = None

    def _draw(self) -> None:
        done = sum(d for d, _ in self._items.values())
        totals = [t for _, t in self._items.values()]
        total = sum(t for t in totals if t) if all(totals) else None
        complete = sum(1 for d, t in self._items.values() if t is not None and d >= t)
        parts = []
        if self._items:
            part = f"download {complete}/{len(self._items)} {human_size(done)}"
            if total:
                part += f" of {human_size(total)} ({100 * done / total:.0f}%)"
            parts.append(part)
        if self._converting:
            index, count = self._converting
            parts.append(f"converting layer {index + 1}/{count}")
        self._write("\r\033[K  " + ", ".join(parts))

    def _clear_line(self) -> None:
        if self.tty and (self._items or self._converting):
            self._write("\r\033[K")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass
