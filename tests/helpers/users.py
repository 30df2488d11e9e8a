"""An unprivileged account for integration tests, and a runner for `pyenroot` as that account.

Our users are never root, so every container test runs the CLI as this user with a private HOME and
private XDG directories.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pyenroot.devtools import account

USER_NAME = "pyenroot-tester"
OTHER_USER_NAME = "pyenroot-other"  # a second local account: plants files the test user must refuse
VENV_PYTHON = Path("/opt/pyenroot/venv/bin/python")
REPO = Path(__file__).resolve().parents[2]


def ensure_user(name: str = USER_NAME) -> pwd.struct_passwd:
    return account.ensure_user(name)


def user_python() -> str:
    """A Python interpreter the unprivileged user can execute (root's own may live under /root)."""
    if VENV_PYTHON.exists():
        return str(VENV_PYTHON)
    return sys.executable


def install_wrapper(workdir: Path, repo: Path = REPO) -> Path:
    """Copy the package (of `repo`, this checkout unless a benchmark compares another) somewhere world-readable
    and write a `pyenroot` command that runs it.

    The checkout may sit in a directory the test user cannot read (CI clones anywhere), so the source
    under test is copied once per session. The command is a Python script like the one an installation makes
    (no shell in between, no `-m`: what the tests and bench/slurm.py time is what users run), with the copy
    first on its path; PYTHONPATH carries the copy to pyenroot's own Python children.
    """
    src = workdir / "src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(repo / "pyenroot", src / "pyenroot", ignore=shutil.ignore_patterns("__pycache__"))
    # Compiled once here: the test user cannot write __pycache__ into the copy.
    subprocess.run([user_python(), "-m", "compileall", "-q", str(src)], check=True)
    wrapper = workdir / "bin" / "pyenroot"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(
        f"#!{user_python()}\n"
        "import os\n"
        "import sys\n"
        f"SOURCE = {str(src)!r}\n"
        "sys.path.insert(0, SOURCE)\n"
        "os.environ['PYTHONPATH'] = SOURCE + (':' + os.environ['PYTHONPATH'] if os.environ.get('PYTHONPATH') else '')\n"
        "from pyenroot.cli import main\n"
        "sys.exit(main())\n"
    )
    wrapper.chmod(0o755)
    for path in [workdir, *workdir.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o555 if path.is_dir() else path.stat().st_mode | 0o444)
    return wrapper


@dataclass
class TestUser:
    """The unprivileged account and a private home for one test."""

    name: str
    uid: int
    gid: int
    home: Path
    wrapper: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **overrides: str | None) -> dict[str, str]:
        """The user's environment; an override of None removes the variable."""
        env = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": f"{self.wrapper.parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "XDG_DATA_HOME": str(self.home / ".local/share"),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "XDG_RUNTIME_DIR": str(self.home / ".run"),
            "TMPDIR": str(self.home / "tmp"),
            "LANG": "C.UTF-8",
        }
        env.update(self.extra_env)
        env.update(overrides)
        return {name: value for name, value in env.items() if value is not None}

    def run(self, argv: list[str], *, env: dict[str, str | None] | None = None, input: str | bytes | None = None,
            cwd: Path | str | None = None, timeout: float = 300, check: bool = False,
            text: bool = True) -> subprocess.CompletedProcess:
        """Run any command as the user, with the user's environment (plus `env`)."""
        full_env = self.env(**(env or {}))
        if isinstance(input, str) and not text:
            input = input.encode()
        return subprocess.run(
            argv, env=full_env, input=input, capture_output=True, text=text, timeout=timeout,
            cwd=str(cwd or self.home), user=self.uid, group=self.gid, extra_groups=[], check=check,
        )

    def pyenroot(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Run `pyenroot ARGS...` as the user."""
        return self.run([str(self.wrapper), *args], **kwargs)

    def make_dir(self, relative: str) -> Path:
        path = self.home / relative
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.uid, self.gid)
        return path

    def give(self, path: Path) -> Path:
        """Hand a file or tree made by root to the user."""
        for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
            os.lchown(p, self.uid, self.gid)
        return path


def make_private_home(base: Path, account: pwd.struct_passwd, wrapper: Path, label: str) -> TestUser:
    """A fresh home directory (with XDG dirs) owned by the account, below `base`."""
    home = base / label
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    user = TestUser(account.pw_name, account.pw_uid, account.pw_gid, home, wrapper)
    for sub in (".local/share", ".config", ".cache", ".run", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    (home / ".run").chmod(0o700)
    user.give(home)
    return user
