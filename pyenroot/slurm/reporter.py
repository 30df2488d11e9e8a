"""Result lines for the plugin, `KIND TEXT` each, over the pipe it names (fd 3); without the plugin (tests,
manual runs) they go to stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys


class Reporter:
    """Result lines for the plugin (fd 3); without the plugin (tests, manual runs) they go to stderr."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def _write(self, kind: str, text: str) -> None:
        line = f"{kind} {text.replace(chr(10), ' ')}\n"
        if self.fd is None:
            sys.stderr.write(line)
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, line.encode())

    def log(self, text: str) -> None:
        self._write("log", text)

    def info(self, text: str) -> None:
        self._write("info", text)

    def error(self, text: str) -> None:
        self._write("error", text)

    def join(self, pid: int) -> None:
        self._write("join", str(pid))

    def seccomp(self, program: bytes) -> None:
        self._write("seccomp", program.hex())

    def cleanup(self) -> None:
        self._write("cleanup", "1")

    def broadcast(self, description: str) -> None:
        self._write("broadcast", description)

    def unlink(self, path: str) -> None:
        self._write("unlink", path)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def result_reporter(environ: dict[str, str] | None = None) -> Reporter:
    """The pipe the plugin names in PYENROOT_SPANK_RESULT_FD (taken out of the environment, which the
    container inherits), else stderr (manual runs)."""
    environ = os.environ if environ is None else environ
    try:
        fd = int(environ.pop("PYENROOT_SPANK_RESULT_FD", ""))
        os.fstat(fd)
    except (ValueError, OSError):
        return Reporter(None)
    os.set_inheritable(fd, False)  # the container must not keep the plugin waiting
    return Reporter(fd)

