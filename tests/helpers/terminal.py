"""A pseudo-terminal of a set size, for tests of what a user sees at a terminal: a command runs as the test user
with the terminal as its stdin, stdout, stderr and controlling terminal, so that Ctrl-C (`press(b"\\x03")`)
reaches it as the terminal's SIGINT."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time
from dataclasses import dataclass, field

from tests.helpers.users import TestUser

# A bound on waiting for output that is sure to come, so that a broken build fails rather than hangs; not a
# timing that any assertion depends on.
PATIENCE = 300.0


def _take_terminal() -> None:
    """In the child, a session leader now (start_new_session): make its stdin its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@dataclass
class TerminalRun:
    process: subprocess.Popen
    master: int
    output: bytearray = field(default_factory=bytearray)

    def read_until(self, needle: bytes) -> None:
        """Read the terminal until `needle` has been written to it."""
        deadline = time.monotonic() + PATIENCE
        while needle not in self.output:
            if not self._read_some(deadline):
                raise AssertionError(f"{needle!r} never came; the terminal showed: {self.text()!r}")

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self) -> int:
        """Read to the end (every writer closed the terminal) and return the exit status."""
        deadline = time.monotonic() + PATIENCE
        while self._read_some(deadline):
            pass
        os.close(self.master)
        return self.process.wait(timeout=PATIENCE)

    def text(self) -> str:
        """What was written, with the terminal's CR LF line ends turned back into LF."""
        return self.output.decode(errors="replace").replace("\r\n", "\n")

    def _read_some(self, deadline: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 1 << 16)
        except OSError:  # EIO: the last process holding the terminal has closed it
            return False
        self.output += chunk
        return bool(chunk)


def start_in_terminal(user: TestUser, *args: str, columns: int, rows: int = 24,
                      env: dict[str, str | None] | None = None) -> TerminalRun:
    """Start `pyenroot ARGS...` as the user on a new pseudo-terminal `columns` wide."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    try:
        process = subprocess.Popen([str(user.wrapper), *args], stdin=slave, stdout=slave, stderr=slave,
                                   env=user.env(**(env or {})), cwd=user.home, user=user.uid, group=user.gid,
                                   extra_groups=[], start_new_session=True, preexec_fn=_take_terminal)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return TerminalRun(process, master)
