"""What a caller asks of a container start, as one typed value: the CLI's `start`, `batch`, a bundle's runtime
and the Slurm step each build a `StartOptions` and hand it to `startup.start(options, settings)`.

Strings from a command line are turned into these values by the caller that read them (`commands/start.py`);
nothing below re-parses arguments.
"""

from __future__ import annotations

from pathlib import Path

from pyenroot.record import record
from pyenroot.runtime.plan import Mount

TYPE_CHECKING = False  # typing's flag without importing typing (a start imports as little as it can)
if TYPE_CHECKING:
    from pyenroot.runtime.launcher import Target

NAMESPACES = ("pid", "net", "ipc", "uts")  # what `namespaces` may hold (besides the user and mount ones)

# How a writable start of a .sqsh image gets its root filesystem (PYENROOT_SQSH_WRITABLE, squashmount.py); here
# so that every start checks the setting without importing squashmount.
WRITABLE_UNPACK = "unpack"  # a real tree in the tmpfs: every rename works; time and memory grow with the image
WRITABLE_OVERLAY = "overlay"  # as a read-only start: fast, but renaming a directory of the image fails (EXDEV)
WRITABLE_METHODS = (WRITABLE_UNPACK, WRITABLE_OVERLAY)

EnvEntry = tuple[str, str | None]
"""One variable to set in the container: (NAME, VALUE), or (NAME, None) for the host's value (empty when the
host has none), as `--env NAME` takes it."""


@record(frozen=True)
class StartOptions:
    """One start. A None switch leaves the settings (ENROOT_REMAP_ROOT, ENROOT_ROOTFS_WRITABLE) in charge;
    True or False overrides them, and so do configuration-script directives."""

    target: str | Target  # a container name or a squashfs image; or a root filesystem at hand (a bundle's)
    command: tuple[str, ...] = ()  # empty: the image's entrypoint, or a shell
    conf: Path | None = None  # configuration script (`start -c`, a batch file)
    rc: Path | None = None  # init script to run instead of the image's /etc/rc (`--rc`)
    entrypoint: bool = True  # False: the command runs without the image's entrypoint, in its working directory
    env: tuple[EnvEntry, ...] = ()  # after every other source of the environment but the hooks
    mounts: tuple[Mount, ...] = ()  # after the image's fstab, mounts.d and the config script's mounts()
    remap_root: bool | None = None  # the caller is root in the container
    writable: bool | None = None  # the root filesystem is writable
    namespaces: frozenset[str] = frozenset()  # of NAMESPACES: also unshared (the settings may add more)

    def __post_init__(self) -> None:
        unknown = set(self.namespaces) - set(NAMESPACES)
        if unknown:
            raise ValueError(f"unknown namespaces: {', '.join(sorted(unknown))}")
