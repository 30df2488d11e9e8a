"""The peer tools the benchmarks compare pyenroot with, run as the unprivileged benchmark account.

One place that knows how to find each peer (Charliecloud `ch-run`, rootless `podman`, `udocker`), configure it
for a private HOME on this kind of host (no systemd, hybrid cgroups, no network helper), bring a root filesystem
into it and start a command in it. `make bench-deps` installs them; a peer that is missing or does not work here
is reported with the reason, never fatal.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TEST_USER = "pyenroot-tester"
BENCH_VENV = Path(os.environ.get("PYENROOT_BENCH_VENV", "/opt/pyenroot/bench-venv"))
IMAGE_NAME = "pyenroot-bench"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


class PeerUnavailable(Exception):
    """A peer cannot run here; the message says why (one line, for the report)."""


# ------------------------------------------------------------------------------------------ the account


class Runner:
    """Runs commands as the unprivileged benchmark account, with a private HOME below `work`.

    Run as root, every command drops to `pyenroot-tester` (no supplementary groups); run as anyone else, it runs
    as that user. The environment is built from scratch so nothing of the caller leaks into a measurement.
    """

    def __init__(self, work: Path, extra_env: Mapping[str, str] | None = None):
        self.account = pwd.getpwnam(TEST_USER) if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
        self.home = work / "home"
        for sub in ("", ".local/share/enroot", ".config", ".cache", ".run", "tmp"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self.give_to_account(self.home)
        (self.home / ".run").chmod(0o700)
        self.env = {
            "HOME": str(self.home), "USER": self.account.pw_name, "LOGNAME": self.account.pw_name,
            "PATH": SYSTEM_PATH, "LANG": "C.UTF-8",
            "XDG_DATA_HOME": str(self.home / ".local/share"), "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_CACHE_HOME": str(self.home / ".cache"), "XDG_RUNTIME_DIR": str(self.home / ".run"),
            "TMPDIR": str(self.home / "tmp"), **(extra_env or {}),
        }

    @property
    def uid(self) -> int:
        return self.account.pw_uid

    def give_to_account(self, top: Path) -> None:
        """Hand a tree made by root to the account (a no-op when not root)."""
        if os.geteuid() != 0:
            return
        for path in [top, *top.rglob("*")]:
            os.chown(path, self.account.pw_uid, self.account.pw_gid, follow_symlinks=False)

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        kwargs: dict = {}
        if os.geteuid() == 0:
            kwargs = dict(user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[])
        return subprocess.run(argv, env=self.env, cwd=str(self.home), stdin=subprocess.DEVNULL,
                              capture_output=True, check=check, **kwargs)

    def timed(self, argv: list[str]) -> float:
        """Wall-clock milliseconds of one run; a failing run raises (a benchmark of errors means nothing)."""
        started = time.perf_counter()
        self.run(argv)
        return (time.perf_counter() - started) * 1000


def failure(result: subprocess.CompletedProcess | subprocess.CalledProcessError) -> str:
    """The last line of a failed command's error output, for a report."""
    lines = (result.stderr or b"").decode(errors="replace").strip().splitlines()
    return lines[-1][-200:] if lines else f"exit status {result.returncode}"


# ------------------------------------------------------------------------------------------ the image


@dataclass(frozen=True)
class BenchImage:
    """One root filesystem in the forms the tools take: a directory, a squashfs image, a plain tar."""

    tree: Path
    sqsh: Path
    tar: Path


@dataclass(frozen=True)
class StartCase:
    """One way of starting `true`: `form` is 'container' (an unpacked or imported root filesystem) or 'sqsh'
    (a squashfs image started directly), so a report can set it beside pyenroot's own start of that form."""

    label: str
    argv: list[str]
    form: str


# ------------------------------------------------------------------------------------------ the peers


class Peer:
    """A peer tool: find it, set it up for the account, load an image, start a command in it."""

    name = ""

    def executable(self) -> str | None:
        raise NotImplementedError

    def missing(self) -> str | None:
        """Why the peer cannot be used at all, or None."""
        if self.executable() is None:
            return f"{self.name} is not installed (make bench-deps)"
        return None

    def environment(self, runner: Runner) -> dict[str, str]:
        """Variables the peer needs in every command's environment."""
        return {}

    def setup(self, runner: Runner) -> None:
        """Write the peer's configuration below the account's HOME."""

    def load(self, runner: Runner, image: BenchImage) -> None:
        """Bring the image into the peer's own storage; raises PeerUnavailable."""

    def start_cases(self, image: BenchImage, directory: Path) -> list[StartCase]:
        """Ways to start `true` in the loaded image (`directory` is an unpacked copy the account owns)."""
        raise NotImplementedError

    def sqsh_case(self, sqsh: Path, label: str) -> StartCase | None:
        """Starting `true` directly in any squashfs image, where the peer can (no import: images of GBs)."""
        return None

    def version(self, runner: Runner) -> str:
        return ""

    def cleanup(self, runner: Runner) -> None:
        """Stop what the peer left running; files go with the benchmark's temporary directory."""


def check_load(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise PeerUnavailable(f"{what}: {failure(result)}")


class Charliecloud(Peer):
    """`ch-run` (charliecloud-runtime): a directory, or a squashfs image it mounts itself with squashfuse."""

    name = "charliecloud"

    def executable(self) -> str | None:
        return shutil.which("ch-run", path=SYSTEM_PATH)

    def start_cases(self, image: BenchImage, directory: Path) -> list[StartCase]:
        return [StartCase("ch-run DIR -- true", ["ch-run", str(directory), "--", "true"], "container"),
                self.sqsh_case(image.sqsh, "IMAGE.sqsh")]

    def sqsh_case(self, sqsh: Path, label: str) -> StartCase:
        return StartCase(f"ch-run {label} -- true", ["ch-run", str(sqsh), "--", "true"], "sqsh")

    def version(self, runner: Runner) -> str:
        result = runner.run(["ch-run", "--version"], check=False)
        return "ch-run " + (result.stdout or result.stderr).decode(errors="replace").strip()


def cgroup_mode(mountinfo: str) -> str:
    """'unified' (cgroup v2 only), 'hybrid' (v1 controllers plus a v2 tree) or 'legacy' (v1 only)."""
    types = set()
    for line in mountinfo.splitlines():
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].split()[0] in ("cgroup", "cgroup2"):
            types.add(fields[1].split()[0])
    if types == {"cgroup2"}:
        return "unified"
    return "hybrid" if "cgroup2" in types else "legacy"


def podman_runtime(mode: str) -> str:
    """The OCI runtime rootless podman can use: crun refuses a hybrid cgroup layout, runc copes with it."""
    return "crun" if mode == "unified" else "runc"


def podman_configs(runtime: str, runroot: Path) -> dict[str, str]:
    """containers.conf and storage.conf for a host without systemd or a user session bus."""
    return {
        # cgroupfs: there is no systemd to ask for a scope; file events: no journald.
        "containers.conf": f'[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nruntime = "{runtime}"\n',
        # Kernel overlayfs in the user namespace (Linux >= 5.11); podman would otherwise fall back to vfs,
        # which copies the whole image for every container. A short runroot: with a long one (52 characters
        # did, 28 did not) every `podman run` here waited 20 s for conmon's exit report before returning.
        "storage.conf": f'[storage]\ndriver = "overlay"\nrunroot = "{runroot}"\n',
    }


class Podman(Peer):
    """Rootless podman with its own storage below the account's HOME; no network (slirp4netns is not needed)."""

    name = "podman"

    def __init__(self) -> None:
        self.runroot: Path | None = None

    def executable(self) -> str | None:
        return shutil.which("podman", path=SYSTEM_PATH)

    def setup(self, runner: Runner) -> None:
        runtime = podman_runtime(cgroup_mode(Path("/proc/self/mountinfo").read_text()))
        self.runroot = Path(tempfile.mkdtemp(prefix="pyb-", dir="/tmp"))
        runner.give_to_account(self.runroot)
        config = runner.home / ".config" / "containers"
        config.mkdir(parents=True, exist_ok=True)
        for name, text in podman_configs(runtime, self.runroot).items():
            (config / name).write_text(text)
        runner.give_to_account(config)

    def load(self, runner: Runner, image: BenchImage) -> None:
        check_load(runner.run(["podman", "import", "--quiet", str(image.tar), IMAGE_NAME], check=False),
                   "podman import")

    def start_cases(self, image: BenchImage, directory: Path) -> list[StartCase]:
        argv = ["podman", "run", "--rm", "--network=none", f"localhost/{IMAGE_NAME}", "true"]
        return [StartCase("podman run --rm IMAGE true", argv, "container")]

    def version(self, runner: Runner) -> str:
        result = runner.run(["podman", "--version"], check=False)
        runtime = podman_runtime(cgroup_mode(Path("/proc/self/mountinfo").read_text()))
        return result.stdout.decode(errors="replace").strip() + f" ({runtime}, overlay, cgroupfs)"

    def cleanup(self, runner: Runner) -> None:
        # Rootless podman keeps a pause process holding its user namespace; it would outlive the benchmark.
        pid_file = runner.home / ".run" / "libpod" / "tmp" / "pause.pid"
        with contextlib.suppress(OSError, ValueError):  # no pause process: nothing to stop
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        if self.runroot:  # outside the benchmark's temporary directory
            shutil.rmtree(self.runroot, ignore_errors=True)
            self.runroot = None


class Udocker(Peer):
    """udocker from PyPI in its own virtualenv, in its default P1 mode with Debian's proot.

    udocker normally downloads its engine tarball on first use; nothing outside can be reached here, and Debian's
    proot is the same engine, so the download is switched off (an empty UDOCKER_TARBALL) and proot named.
    """

    name = "udocker"

    def executable(self) -> str | None:
        return shutil.which("udocker", path=f"{BENCH_VENV / 'bin'}:{SYSTEM_PATH}")

    def missing(self) -> str | None:
        if self.executable() is None:
            return "udocker is not installed (make bench-deps)"
        if shutil.which("proot", path=SYSTEM_PATH) is None:
            return "proot is not installed (make bench-deps)"
        return None

    def environment(self, runner: Runner) -> dict[str, str]:
        return {"UDOCKER_DIR": str(runner.home / ".udocker"), "UDOCKER_TARBALL": "",
                "UDOCKER_USE_PROOT_EXECUTABLE": shutil.which("proot", path=SYSTEM_PATH) or "proot"}

    def load(self, runner: Runner, image: BenchImage) -> None:
        udocker = self.executable() or "udocker"
        check_load(runner.run([udocker, "import", str(image.tar), IMAGE_NAME], check=False), "udocker import")
        check_load(runner.run([udocker, "create", f"--name={IMAGE_NAME}", IMAGE_NAME], check=False),
                   "udocker create")

    def start_cases(self, image: BenchImage, directory: Path) -> list[StartCase]:
        argv = [self.executable() or "udocker", "--quiet", "run", IMAGE_NAME, "true"]
        return [StartCase("udocker run NAME true", argv, "container")]

    def version(self, runner: Runner) -> str:
        result = runner.run([self.executable() or "udocker", "--version"], check=False)
        for line in result.stdout.decode(errors="replace").splitlines():
            if line.startswith("version:"):
                return "udocker " + line.split(":", 1)[1].strip() + " (P1, proot)"
        return "udocker"


ALL_PEERS: tuple[type[Peer], ...] = (Charliecloud, Podman, Udocker)


def usable_peers(kinds: tuple[type[Peer], ...] = ALL_PEERS) -> tuple[list[Peer], dict[str, str]]:
    """Fresh instances of the installed peers, and why each of the others is left out."""
    usable, skipped = [], {}
    for peer in (kind() for kind in kinds):
        reason = peer.missing()
        if reason:
            skipped[peer.name] = reason
        else:
            usable.append(peer)
    return usable, skipped


def peer_environment(peers: list[Peer], runner: Runner) -> dict[str, str]:
    merged: dict[str, str] = {}
    for peer in peers:
        merged.update(peer.environment(runner))
    return merged
