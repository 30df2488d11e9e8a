"""Progress of long work (import, load, create, export, bundles): live bars on a terminal (tqdm, imported only
there), a few summary lines and the time of each phase elsewhere (Slurm logs, pipes).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable
from types import TracebackType

TYPE_CHECKING = False  # typing's flag without importing typing (a Slurm step loads this module)
if TYPE_CHECKING:
    from typing import TextIO

# The order phases are listed in at the end; the rest follow in the order they ran.
PHASE_ORDER = ("resolve", "download", "merge", "squash")


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def format_timings(timings: list[tuple[str, float]], total: float | None = None) -> str:
    """`resolve 0.1 s, download 2.6 s, merge 15.8 s, squash 0.5 s`, known phases first; with `total`, the
    whole run's time too (and that downloads overlap the merge, so the parts add up to more)."""
    rank = {name: index for index, name in enumerate(PHASE_ORDER)}
    ordered = sorted(timings, key=lambda item: rank.get(item[0], len(rank)))  # stable: the rest as they ran
    text = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in ordered)
    if total is None:
        return text
    overlap = "; downloads overlap the merge" if any(name == "download" for name, _ in ordered) else ""
    return f"{text} (total {total:.1f} s{overlap})"


# squashfs-tools draw their own bar on stdout, even into a pipe: `\r[====|    ] 270/600  45%`.
_TOOL_COUNT = rb"(\d+)/(\d+)\s+\d+%"  # compiled (and cached by re) at its first use: a cached image uses none


def tool_count(output: bytes) -> tuple[tuple[int, int] | None, bytes]:
    """The last `done/total` in the complete redraws of a squashfs tool's progress output, and the unfinished
    rest (to be prefixed to the next read)."""
    *complete, rest = re.split(rb"[\r\n]", output)
    for segment in reversed(complete):
        found = re.search(_TOOL_COUNT, segment)
        if found:
            return (int(found.group(1)), int(found.group(2))), rest
    return None, rest


class ToolBarReader:
    """Reads a squashfs tool's bar from its stdout as it comes (`tools.check`'s `on_output`) and passes each
    `done, total` it shows to `on_count`."""

    def __init__(self, on_count: Callable[[int, int], None]):
        self._on_count = on_count
        self._rest = b""

    def __call__(self, chunk: bytes) -> None:
        count, self._rest = tool_count(self._rest + chunk)
        if count:
            self._on_count(*count)


def new_progress(verbose: int, stream: TextIO | None) -> ImportProgress:
    """The progress of one import: on `stream` (stderr by default)."""
    return ImportProgress(stream or sys.stderr, verbose=verbose)


class ImportProgress:
    """A ProgressReporter, and a context manager that ends the live bar however the block ends.
    Thread-safe: downloads report from worker threads."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, verbose: int = 0, clock=time.monotonic):
        self.stream = stream
        self.tty = _isatty(stream) if tty is None else tty
        self.verbose = verbose
        self._clock = clock
        import threading  # here: a cached image's step shows no progress and needs no thread module

        self._lock = threading.Lock()
        self._phase: str | None = None
        self._phase_start = 0.0
        self.timings: list[tuple[str, float]] = []
        self._items: dict[str, tuple[int, int | None]] = {}
        self._started = clock()
        self._bars: TerminalBars | None = None
        self._closed = False

    def __enter__(self) -> ImportProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # ---------------------------------------------------------------------------- protocol

    def phase(self, name: str) -> None:
        with self._lock:
            now = self._clock()
            self._close_phase(now)
            self._phase = name
            self._phase_start = now
            self._items.clear()
            self._draw(lambda bars: bars.phase(name))

    def advance(self, item: str, done: int, total: int | None) -> None:
        """Bytes of one download (`item` is its digest); a registry reports every few MiB."""
        with self._lock:
            self._items[item] = (done, total)
            totals = [t for _, t in self._items.values()]
            whole = sum(totals) if all(t is not None for t in totals) else None  # type: ignore[arg-type]
            done = sum(d for d, _ in self._items.values())
            self._draw(lambda bars: bars.download(done, whole))

    # ------------------------------------------------------------------------------ extras

    def converting(self, index: int, total: int) -> None:
        """The merge has reached layer `index` (0 = top) of `total`: `index` layers are done."""
        self.count(index, total)

    def count(self, done: int, total: int) -> None:
        """Items done in the current phase (layers merged, entries a squashfs tool has written or unpacked)."""
        with self._lock:
            self._draw(lambda bars: bars.count(done, total))

    def tool_output(self) -> ToolBarReader:
        """What reads a squashfs tool's bar into `count` (`tools.check(..., on_output=...)`)."""
        return ToolBarReader(self.count)

    def note(self, message: str) -> None:
        """A summary line, shown on terminals and in logs alike."""
        self._line(f"[pyenroot] {message}")

    def warn(self, message: str) -> None:
        self._line(f"pyenroot: warning: {message}")

    def record(self, name: str, seconds: float) -> None:
        """A phase timed elsewhere (downloads overlap the merge and are timed by their own thread)."""
        with self._lock:
            self.timings.append((name, seconds))
            if name == "download":
                self._draw(lambda bars: bars.download_done())

    def finish(self) -> None:
        """The work is done: end the bar; the time of each phase in logs (and with -v on a terminal)."""
        with self._lock:
            now = self._clock()
            self._close_phase(now)
            self._end_bars()
            if self.timings and (self.verbose or not self.tty):
                total = now - self._started if self.verbose else None
                self._write(f"[pyenroot] time: {format_timings(self.timings, total)}\n")

    def close(self) -> None:
        """End the live bar (success, error or interrupt), so that whatever follows starts on its own line."""
        with self._lock:
            self._end_bars()
            self._closed = True

    # ----------------------------------------------------------------------------- helpers

    def _live(self) -> TerminalBars | None:
        """The terminal's bars, while they are shown."""
        if not self.tty or self._closed:
            return None
        if self._bars is None:
            try:
                self._bars = TerminalBars(self.stream)
            except ImportError:  # no tqdm (a bundle's runner, under `python3 -I -S`): lines as in a log
                self.tty = False
                return None
        return self._bars

    def _draw(self, action: Callable[[TerminalBars], None]) -> None:
        """`action` on the bars while they are shown; a terminal gone (hung up, closed) ends them, not the work."""
        bars = self._live()
        if bars is None:
            return
        try:
            action(bars)
        except (OSError, ValueError):
            self._closed = True

    def _end_bars(self) -> None:
        if self._bars is not None:
            with contextlib.suppress(OSError, ValueError):
                self._bars.close()

    def _close_phase(self, now: float) -> None:
        if self._phase is not None:
            self.timings.append((self._phase, now - self._phase_start))
            self._phase = None

    def _line(self, text: str) -> None:
        with self._lock:
            if self._bars is None:
                self._write(text + "\n")
            else:
                try:
                    self._bars.write(text)
                except (OSError, ValueError):
                    self._closed = True

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass


_ITEMS = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"


class TerminalBars:
    """The live bars on a terminal, one at a time, each fitted to the terminal's width as it is now; a finished
    bar stays as one line of the scrollback. Downloads overlap the merge: while they run, the download bar is
    the live one and the merge's bar (layers) follows it."""

    def __init__(self, stream: TextIO):
        import threading

        import tqdm

        # No monitor thread (a Slurm step starts the container in this process, with one thread at unshare) and
        # a thread lock rather than tqdm's default multiprocessing one.
        tqdm.tqdm.monitor_interval = 0
        tqdm.tqdm.set_lock(threading.RLock())
        self._tqdm = tqdm.tqdm
        self.stream = _LineEnds(stream)
        self._bar = None
        self._kind: str | None = None  # "download" or the phase the bar shows
        self._phase: str | None = None  # the phase running now
        self._count: tuple[int, int] | None = None

    def phase(self, name: str) -> None:
        if self._kind == self._phase and self._bar is not None and self._bar.total is not None:
            self._bar.update(self._bar.total - self._bar.n)  # the phase is over: all of its items are done
        self._phase, self._count = name, None
        if self._kind != "download":
            self._open(name, None)

    def download(self, done: int, total: int | None) -> None:
        if self._kind != "download":
            self._open("download", total, unit="B", scale=True)
        bar = self._bar
        bar.total = total
        bar.update(done - bar.n)

    def download_done(self) -> None:
        if self._kind == "download":
            if self._count:
                self._open(self._phase or "merge", self._count[1])
                self._bar.update(self._count[0])
            else:
                self._open(self._phase or "merge", None)

    def count(self, done: int, total: int) -> None:
        self._count = (done, total)
        if self._kind == "download":
            return  # shown when the downloads are over
        if self._kind != self._phase or self._bar.total is None:
            self._open(self._phase or "work", total)
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def write(self, line: str) -> None:
        """A line above the live bar (a note, a warning): the bar is cleared, the line written, the bar redrawn."""
        if self._bar is None:
            self.stream.write(line + "\n")
            self.stream.flush()
            return
        self._bar.clear()
        self.stream.write(line + "\n")
        self._bar.refresh()

    def close(self) -> None:
        """Leave the bar as it is now and end its line (also when an interrupt cut tqdm short in a redraw)."""
        bar, self._bar, self._kind = self._bar, None, None
        try:
            if bar is not None:
                bar.close()
        finally:
            if not self.stream.line_ended:
                self.stream.write("\n")
                self.stream.flush()

    def _open(self, desc: str, total: int | None, *, unit: str = "", scale: bool = False) -> None:
        if self._bar is not None and self._bar.total is None and self._kind == self._phase:
            self._bar.leave = False  # the phase's bar without a count, replaced by one with: no stale line
        self.close()
        if scale:
            layout = None  # tqdm's own: percentage, bar, bytes, time so far and left, rate
        elif total is None:
            layout = "{desc} {elapsed}"  # nothing counted (resolve, tar2sqfs finishing the image)
        else:
            layout = _ITEMS  # items done and time left (a rate of layers means little)
        fixed = _fixed_width(self.stream)
        self._bar = self._tqdm(total=total, desc=desc, unit=unit or "it", unit_scale=scale,
                               unit_divisor=1024, file=self.stream, dynamic_ncols=fixed is None, ncols=fixed,
                               leave=True, mininterval=0.1, bar_format=layout)
        self._kind = desc


_open_line = [False]  # whether a bar's line is open on the terminal now (for the CLI's "interrupted" line)


def terminal_line_open() -> bool:
    """Whether a live bar left its line open (an interrupt can cut the bar short before it ends the line)."""
    return _open_line[0]


class _LineEnds:
    """The terminal stream as the bars write it, knowing whether the last thing written ended a line."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    @property
    def line_ended(self) -> bool:
        return not _open_line[0]

    def write(self, text: str) -> int:
        if text:  # noted before the write: an interrupt may come between the write and the next statement
            _open_line[0] = not text.endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _fixed_width(stream: TextIO) -> int | None:
    """None where the stream's terminal tells its size (tqdm asks it at every redraw, so a resized window is
    followed); else the width COLUMNS sets, if any. One column stays free: a line that fills the last one
    wraps on some terminals."""
    try:
        os.get_terminal_size(stream.fileno())
        return None
    except (AttributeError, ValueError, OSError):
        pass
    columns = os.environ.get("COLUMNS", "")
    return int(columns) - 1 if columns.isdigit() and int(columns) > 1 else None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
