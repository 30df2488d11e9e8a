"""Writing a file so that readers see either the old content or the new, never half of it."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Write `data` to a temp file beside `path`, then rename it over `path`. Without `mode` the file keeps
    the temp file's 0600 (private)."""
    fd, temp = _create_beside(path)
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as handle:
            handle.write(data)
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


_TEMP_ATTEMPTS = 100


def _create_beside(path: Path) -> tuple[int, str]:
    """A new, private (0600) file `.NAME.RANDOM` in `path`'s directory, as tempfile.mkstemp makes one: without
    tempfile, whose import (random, hashlib, shutil) would cost every start of a .sqsh image, whose hooks
    write /etc/passwd and /etc/group each time."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_TEMP_ATTEMPTS):
        temp = os.path.join(path.parent, f".{path.name}.{os.urandom(6).hex()}")
        try:
            return os.open(temp, flags, 0o600), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")
