"""What long work shows: tqdm bars on a terminal (a pseudo-terminal of a set width), summary lines and phase
times in a pipe; Ctrl-C ends the bar and says so. Real imports from the loopback registry as the test user."""

from __future__ import annotations

import random
import re

import pytest

from pyenroot.devtools import imagebuilder as ib
from tests.helpers.terminal import start_in_terminal
from tests.integration.imagecheck import HTTP, push, uri

WIDTH = 72
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# tqdm's bar of a download: percentage, bar, bytes done of all, [time so far<time left, rate].
DOWNLOAD_BAR = re.compile(r"download: +\d+%\|[^|]*\| *[\d.]+[kMG]?/[\d.]+[kMG]? "
                          r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+[kMG]?B/s\]")


@pytest.fixture(scope="module")
def big_image(registry, pusher) -> str:
    """One 16 MiB layer of incompressible bytes: the download reports several times on the way."""
    data = random.Random(16).randbytes(16 << 20)
    push(pusher, "test/progress-big", "v1", [[ib.Entry("data", "dir"), ib.Entry("data/blob", data=data)]])
    return uri(registry, "test/progress-big", "v1")


def bar_redraws(text: str) -> list[str]:
    """Every state a bar was drawn in (summary lines, which stay, may wrap like any output)."""
    parts = [ANSI.sub("", part) for part in re.split(r"[\r\n]", text)]
    return [part for part in parts if part.strip() and not part.startswith(("[pyenroot]", "pyenroot:"))]


def test_a_terminal_shows_bars_fitted_to_its_width_and_ended(user, big_image):
    run = start_in_terminal(user, "import", "-o", "big.sqsh", big_image, columns=WIDTH, env=HTTP)
    status = run.wait()
    text = run.text()
    assert status == 0, text
    # How many redraws come between depends on the speed of loopback; the finished bar is always there, with
    # its rate and time left, on a line of its own.
    assert re.search(r"\r" + DOWNLOAD_BAR.pattern.replace(r"\d+%", "100%") + r"\n", text), text
    assert re.search(r"merge: 100%\|[^|]*\| 1/1 \[", text), text
    assert re.search(r"\rsquash \d\d:\d\d\n", text), text
    assert all(len(line) < WIDTH for line in bar_redraws(text)), text
    assert re.search(r"\n\[pyenroot\] wrote \S+big\.sqsh \(.*\)\n$", text), text  # after the bars, at column 0
    assert "time:" not in text  # phase times on a terminal only with -v
    assert (user.home / "big.sqsh").is_file()


def test_ctrl_c_ends_the_bar_and_says_interrupted(user, busybox_image):
    # A decompressor that never ends (and ignores Ctrl-C, as a slow one might get it late) holds the import
    # in its merge, with the merge's bar on the screen, until Ctrl-C.
    stall = user.home / "stall"
    stall.write_text("#!/bin/sh\ntrap '' INT\nexec sleep 600\n")
    stall.chmod(0o755)
    user.give(stall)
    run = start_in_terminal(user, "import", "-o", "never.sqsh", busybox_image.uri, columns=WIDTH,
                            env={**HTTP, "ENROOT_GZIP_PROGRAM": str(stall)})
    run.read_until(b"merge: ")
    run.press(b"\x03")
    status = run.wait()
    text = run.text()
    assert status == 130, text
    assert re.search(r"\rmerge: +\d+%.*\n(\^C)?pyenroot: interrupted\n$", text), text
    assert "Traceback" not in text
    assert not (user.home / "never.sqsh").exists()


def test_a_pipe_gets_summaries_and_phase_times(user, big_image):
    result = user.pyenroot("import", "-o", "big.sqsh", big_image, env=HTTP)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and "%|" not in result.stderr, result.stderr
    assert lines[0] == "[pyenroot] 1 layers, 16.0 MB", lines
    assert re.fullmatch(r"\[pyenroot\] time: resolve [\d.]+ s, download [\d.]+ s, merge [\d.]+ s, squash [\d.]+ s",
                        lines[1]), lines
    assert lines[2].startswith("[pyenroot] wrote "), lines
    assert len(lines) == 3, lines


def test_create_and_export_show_the_tools_counts(user, busybox_sqsh):
    run = start_in_terminal(user, "create", "-n", "box", str(busybox_sqsh), columns=WIDTH)
    status = run.wait()
    assert status == 0, run.text()
    assert re.search(r"\runpack: 100%\|[^|]*\| (\d+)/\1 \[\d\d:\d\d<00:00\]\n", run.text()), run.text()
    run = start_in_terminal(user, "export", "-o", "box.sqsh", "box", columns=WIDTH)
    status = run.wait()
    assert status == 0, run.text()
    assert re.search(r"\rsquash: 100%\|[^|]*\| (\d+)/\1 \[\d\d:\d\d<00:00\]\n", run.text()), run.text()
    exported = user.pyenroot("export", "-o", "again.sqsh", "box")
    assert exported.returncode == 0, exported.stderr
    assert re.fullmatch(r"\[pyenroot\] time: squash [\d.]+ s\n", exported.stderr), exported.stderr


def test_an_error_comes_after_the_ended_bar(user, registry, pusher):
    pusher.image("test/progress-broken", "v1", ib.build_image([b"this is not a tar archive" * 100]))
    run = start_in_terminal(user, "import", "-o", "broken.sqsh", uri(registry, "test/progress-broken", "v1"),
                            columns=WIDTH, env=HTTP)
    status = run.wait()
    text = run.text()
    assert status == 1, text
    assert re.search(r"\rmerge: +0%[^\r\n]*\npyenroot: error: [^\r\n]+ is not a valid tar archive.*\n$", text), text
    assert not (user.home / "broken.sqsh").exists()
