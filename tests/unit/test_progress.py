"""Progress output: summaries and phase times in logs, tqdm bars on a terminal (a StringIO standing in for it;
tests/integration/test_progress.py runs the real thing under a pseudo-terminal)."""

from __future__ import annotations

import io
import re

from pyenroot.image.progress import ImportProgress, ToolBarReader, format_timings, tool_count


def ticking(start: float = 0.0):
    ticks = iter(float(n) for n in range(int(start), 1000))
    return lambda: next(ticks)


def test_phase_times_in_the_issues_format():
    timings = [("merge", 15.84), ("resolve", 0.1), ("squash", 0.5), ("download", 2.62)]
    assert format_timings(timings) == "resolve 0.1 s, download 2.6 s, merge 15.8 s, squash 0.5 s"
    assert format_timings([("unpack", 1.25)], total=1.3) == "unpack 1.2 s (total 1.3 s)"
    assert format_timings([("download", 1.0), ("merge", 2.0)], total=2.5).endswith(
        "(total 2.5 s; downloads overlap the merge)")


def test_a_squashfs_tools_bar_read_back():
    assert tool_count(b"\r[===    ] 270/600  45%\r[=====  ] 400/6") == ((270, 600), b"[=====  ] 400/6")
    assert tool_count(b"created 300 files\n") == (None, b"")
    assert tool_count(b"\r[==] 1/2  50%\n") == ((1, 2), b"")


def test_a_bar_split_across_reads_counts_once_whole():
    counts: list[tuple[int, int]] = []
    read = ToolBarReader(lambda done, total: counts.append((done, total)))
    for chunk in (b"\r[=   ] 27", b"0/600  45%\r[==  ] 4", b"00/600  66%\r"):
        read(chunk)
    assert counts == [(270, 600), (400, 600)]


def test_logs_get_summaries_and_phase_times_always():
    stream = io.StringIO()
    progress = ImportProgress(stream, tty=False, verbose=0, clock=ticking())
    progress.phase("resolve")
    progress.advance("sha256:a", 5, 10)
    progress.phase("merge")
    progress.converting(0, 2)
    progress.record("download", 1.5)
    progress.note("2 layers")
    progress.finish()
    assert stream.getvalue().splitlines() == [
        "[pyenroot] 2 layers", "[pyenroot] time: resolve 1.0 s, download 1.5 s, merge 1.0 s"]


def test_verbose_adds_the_total():
    stream = io.StringIO()
    progress = ImportProgress(stream, tty=False, verbose=1, clock=ticking())
    progress.phase("resolve")
    progress.finish()
    assert stream.getvalue() == "[pyenroot] time: resolve 1.0 s (total 2.0 s)\n"


def test_a_terminal_gets_one_bar_at_a_time_and_no_times(monkeypatch):
    monkeypatch.setenv("COLUMNS", "64")
    stream = io.StringIO()
    with ImportProgress(stream, tty=True, verbose=0) as progress:
        progress.phase("resolve")
        progress.phase("merge")
        progress.advance("sha256:a", 1 << 20, 2 << 20)
        progress.converting(0, 3)  # kept until the downloads are over
        progress.advance("sha256:a", 2 << 20, 2 << 20)
        progress.warn("careful")
        progress.record("download", 0.5)
        progress.converting(1, 3)
        progress.phase("squash")
        progress.finish()
        progress.note("wrote x.sqsh")
    text = stream.getvalue()
    redraws = [line for line in re.split(r"[\r\n]", text) if line.strip()]
    assert all(len(line) <= 63 for line in redraws), redraws
    assert re.search(r"download: 100%\|.*\| 2\.00M/2\.00M \[\d\d:\d\d<00:00, +[\d.]+[kMG]?B/s\]", text), text
    assert re.search(r"\rmerge: 100%\|.*\| 3/3 \[.*\n", text), text  # the phase over: all of its layers done
    assert "\rpyenroot: warning: careful\n" in text  # over the cleared bar, which is redrawn below
    assert "\rsquash 00:00\n[pyenroot] wrote x.sqsh\n" in text  # the last bar ended its line
    assert "time:" not in text
    assert "merge 00:00" not in text.replace("\r", "\n").split("download")[-1]  # replaced, not left behind


def test_the_bar_ends_its_line_when_the_work_fails():
    stream = io.StringIO()
    try:
        with ImportProgress(stream, tty=True) as progress:
            progress.phase("merge")
            progress.advance("sha256:a", 1 << 20, 2 << 20)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    text = stream.getvalue()
    assert text.endswith("\n") and "download:  50%" in text
    progress.advance("sha256:a", 2 << 20, 2 << 20)  # a download thread after the end draws nothing
    assert stream.getvalue() == text


def test_without_tqdm_a_terminal_gets_log_lines(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    stream = io.StringIO()
    with ImportProgress(stream, tty=True, clock=ticking()) as progress:
        progress.phase("unpack")
        progress.count(1, 2)
        progress.finish()
    assert stream.getvalue() == "[pyenroot] time: unpack 1.0 s\n"


class GoneTerminal(io.StringIO):
    """A terminal that has gone away (hung up): every write fails."""

    def write(self, text: str) -> int:
        raise OSError(5, "Input/output error")


def test_a_terminal_gone_ends_the_bars_not_the_work():
    with ImportProgress(GoneTerminal(), tty=True) as progress:
        progress.phase("merge")
        progress.advance("sha256:a", 1, 2)
        progress.count(1, 2)
        progress.note("still fine")
        progress.finish()


def test_tqdm_is_imported_only_for_a_terminal():
    import subprocess
    import sys

    code = ("import sys, io; import pyenroot.cli, pyenroot.image.importer, pyenroot.commands.start; "
            "from pyenroot.image.progress import ImportProgress; "
            "p = ImportProgress(io.StringIO(), tty=False); p.phase('x'); p.advance('a', 1, 2); p.finish(); "
            "print('tqdm' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "False\n"
