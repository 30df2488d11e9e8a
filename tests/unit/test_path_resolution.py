"""Property: a mount target or an in-root mount source never leads outside the container's root.

Random trees of directories, files and symlinks (absolute, relative, climbing, looping) are made on disk;
random paths are resolved the way the launcher resolves mount targets and `${ENROOT_ROOTFS}/...` sources.
Whatever the tree, the result is refused (an escape or a loop) or a path that the kernel, following every
symlink in it, also finds inside the root.
"""

from __future__ import annotations

import os
import tempfile
from functools import partial
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyenroot.errors import ConfigError
from pyenroot.runtime import plan
from pyenroot.runtime.mounter import Mounter, host_path
from pyenroot.runtime.syscalls import Syscalls

NAMES = st.sampled_from(["a", "b", "c", "..", "."])
PLAIN = st.sampled_from(["a", "b", "c"])
HOST_DIRS = st.sampled_from(["/", "/etc", "/tmp", "/usr/lib", "/proc/self"])


@st.composite
def link_targets(draw) -> str:
    parts = draw(st.lists(NAMES, max_size=5))
    if draw(st.booleans()):
        return draw(HOST_DIRS).rstrip("/") + "/" + "/".join(parts)  # absolute: an image's link to a host path
    return "/".join(parts) or "."


@st.composite
def trees(draw) -> list[tuple[tuple[str, ...], str, str]]:
    """(path components, kind, link target) entries; kind is dir, file or link."""
    entries = []
    for _ in range(draw(st.integers(0, 12))):
        path = tuple(draw(st.lists(PLAIN, min_size=1, max_size=3)))
        kind = draw(st.sampled_from(["dir", "file", "link", "link"]))
        entries.append((path, kind, draw(link_targets()) if kind == "link" else ""))
    return entries


@st.composite
def container_paths(draw) -> str:
    parts = draw(st.lists(NAMES, max_size=6))
    return ("/" if draw(st.booleans()) else "") + "/".join(parts)


def _build(root: Path, entries) -> None:
    for parts, kind, link in entries:
        path = root.joinpath(*parts)
        parent = path.parent
        if not Path(os.path.realpath(parent)).is_relative_to(root) or os.path.lexists(path):
            continue  # only make entries whose parent is a real directory of the tree
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                path.mkdir()
            elif kind == "file":
                path.write_text("x")
            else:
                os.symlink(link, path)
        except OSError:
            continue  # a parent is a file or a dangling link: that entry cannot exist


def _inside(root: Path, resolved: Path) -> bool:
    real = Path(os.path.realpath(resolved))
    return str(resolved).startswith(str(root)) and (real == root or real.is_relative_to(root))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=trees(), paths=st.lists(container_paths(), min_size=1, max_size=5))
def test_resolved_targets_and_sources_never_leave_the_root(entries, paths):
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(os.path.realpath(scratch)) / "rootfs"
        root.mkdir()
        _build(root, entries)
        mounter = Mounter(root, Syscalls(), warn=lambda message: None)
        for path in paths:
            as_source = plan.Mount(source=f"{root}/{path}", target="/x", fstype=None, flags=0, data=None)
            for resolve in (partial(host_path, root, path, refuse_escape=True),
                            partial(mounter.source, as_source), partial(host_path, root, path)):
                try:
                    resolved = Path(resolve())
                except plan.PathEscapeError as error:
                    assert "Invalid cross-device link" in error.message
                    continue
                except ConfigError as error:
                    assert "too many levels of symbolic links" in error.message
                    continue
                assert _inside(root, resolved), (path, resolved)


def test_last_link_kept_when_not_followed(tmp_path):
    """`follow=False` resolves the directories but names the link itself, so a hook replaces the link (the
    image's /etc/localtime) instead of writing through it to wherever it points."""
    (tmp_path / "real").mkdir()
    (tmp_path / "etc").symlink_to("/real")
    (tmp_path / "real" / "localtime").symlink_to("/../../host-file")
    assert host_path(tmp_path, "/etc/localtime", follow=False) == tmp_path / "real" / "localtime"
    assert host_path(tmp_path, "/etc/localtime") == tmp_path / "host-file"
