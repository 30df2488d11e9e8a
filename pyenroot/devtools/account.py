"""Unprivileged accounts for the demo and the tests: pyenroot's users are never root."""

from __future__ import annotations

import pwd
import subprocess


def ensure_user(name: str) -> pwd.struct_passwd:
    """The account `name`, created (with a home directory) if it does not exist yet."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
        return pwd.getpwnam(name)
