"""Slurm fan-out: import a step's image once, in srun, and send it to the step's nodes with `sbcast`.

srun's side (`send`, run by the plugin's `slurm_spank_local_user_init`, after the allocation exists and before
the launch) decides whether the nodes need it, imports the image with the steps' own import code, broadcasts
the squashfs into PYENROOT_FANOUT_DIR on every node and describes it in one `Broadcast`, which the plugin passes
to each node's `spank start`. There `receive` checks the file (the user's own, nobody else may write it, its
size, its superblock, the name made for this job, step and manifest digest) before the step uses it; a node
whose copy is missing or damaged imports the image itself and says so in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path

from pyenroot import squashfs, tools, trust
from pyenroot.errors import PyenrootError
from pyenroot.record import fields, record, replace
from pyenroot.slurm import reporter, state

MODES = ("auto", "sbcast", "off")
# Filesystems that several machines mount at once: a cache on one of them is shared by the step's nodes.
SHARED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "ceph", "cephfs", "cifs", "smb3", "smbfs", "9p", "afs", "ocfs2",
    "gfs2", "glusterfs", "panfs", "wekafs", "orangefs", "pvfs2", "virtiofs", "fuse.glusterfs", "fuse.ceph-fuse",
    "fuse.sshfs", "fuse.juicefs", "fuse.gcsfuse", "fuse.s3fs",
})
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@record(frozen=True)
class Broadcast:
    """What srun sent to the nodes: where the image lies on each, its size, and the manifest it was built from."""

    path: str
    size: int
    digest: str
    image: str  # the step's --container-image, as the user wrote it

    def encode(self) -> str:
        return json.dumps({name: getattr(self, name) for name in fields(self)}, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Broadcast | None:
        """The value the plugin passed on; None if it is not one that `encode` made."""
        try:
            data = json.loads(text)
            found = cls(path=data["path"], size=data["size"], digest=data["digest"], image=data["image"])
        except (ValueError, TypeError, KeyError):
            return None
        kinds_ok = isinstance(found.path, str) and type(found.size) is int and isinstance(found.image, str)
        return found if kinds_ok and isinstance(found.digest, str) and _DIGEST.fullmatch(found.digest) else None


# ------------------------------------------------------------------------------------------------ pure


def broadcast_name(uid: int, job: int, step_id: int, digest: str) -> str:
    """One name per user, job, step and manifest: a node never takes another step's (or image's) file."""
    return f"pyenroot-{uid}-{job}.{step_id}-{digest.removeprefix('sha256:')[:16]}.sqsh"


def shared_paths(value: str | None) -> tuple[str, ...]:
    """The plugstack's `fanout_shared=DIR[:DIR...]`: absolute directories, normalized."""
    return tuple(os.path.normpath(p) for p in (value or "").split(":") if p.startswith("/"))


def is_below(path: str, directories: Collection[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in directories)


def cache_is_shared(cache: str, fstype: str, shared: Collection[str]) -> bool:
    """The `auto` rule: the cache is shared by the step's nodes when it lies on a network or cluster filesystem,
    or below a directory the administrator declared shared (`fanout_shared`); anything else is node-local."""
    return fstype in SHARED_FILESYSTEMS or is_below(cache, shared)


def should_broadcast(mode: str, nodes: int, cache_shared: bool) -> bool:
    """`sbcast`: always; `auto`: when more than one node would import into caches of their own; `off`: never."""
    if mode == "sbcast":
        return True
    return mode == "auto" and nodes > 1 and not cache_shared


def pinned(image: str, digest: str) -> str:
    """The image pinned to the manifest digest just resolved, so that what is imported is what was named."""
    return image if "@sha256:" in image else f"{image}@{digest}"


def problem_with(found: Broadcast, request: state.StepRequest, uid: int, size: int | None) -> str | None:
    """Why a broadcast does not belong to this step (None: it does). `size`: the file's (None: no file)."""
    if found.image != request.image:
        return f"it was made for image {found.image}"
    if os.path.basename(found.path) != broadcast_name(uid, request.job, request.step, found.digest):
        return f"{found.path} is not this step's file"
    if "@sha256:" in found.image and not found.image.endswith("@" + found.digest):
        return f"it was built from manifest {found.digest}"
    if size is None:
        return f"{found.path} did not arrive"
    if size != found.size:
        return f"{found.path} has {size} of {found.size} bytes"
    return None


# ------------------------------------------------------------------------------------------------ srun's side


def filesystem_of(path: Path) -> str:
    """The filesystem type of the mount holding `path` (or its nearest existing parent)."""
    from pyenroot.containers.discovery import containing_mount, parse_mountinfo

    existing = Path(os.path.abspath(path))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return ""
    mount = containing_mount(parse_mountinfo(mountinfo), os.path.realpath(existing))
    return mount.fstype if mount else ""


def send(request: state.StepRequest, settings, report: reporter.Reporter, *, mode: str, nodes: int,
         shared: Sequence[str]) -> Broadcast | None:
    """srun: import the step's image once and sbcast it to the step's nodes when they would each import it;
    report the broadcast for the nodes. None when there is nothing to send (every node imports as before)."""
    cache = os.path.abspath(settings.path("ENROOT_CACHE_PATH"))
    if not should_broadcast(mode, nodes, cache_is_shared(cache, filesystem_of(Path(cache)), shared)):
        return None
    import shutil

    if not shutil.which("sbcast"):
        report.log("fanout: sbcast is not installed; each node imports the image itself")
        return None
    try:
        found = _import_and_broadcast(request, settings, report)
    except PyenrootError as exc:
        report.log(f"fanout: {exc.message}; each node imports the image itself")
        return None
    if found is not None:
        report.broadcast(found.encode())
    return found


def _import_and_broadcast(request: state.StepRequest, settings, report: reporter.Reporter) -> Broadcast | None:
    from pyenroot.registry.source import RegistrySource
    from pyenroot.registry.uri import parse_uri
    from pyenroot.slurm import step, translate

    image = request.image or ""
    ref = parse_uri(translate.docker_uri(image))
    if ref.scheme != "docker":
        return None  # dockerd:// images live on each node's engine
    digest = RegistrySource(ref, settings).manifest_digest(None)
    target = Path(os.path.abspath(settings.path("PYENROOT_FANOUT_DIR")))
    name = broadcast_name(os.getuid(), request.job, request.step, digest)
    scratch = target / f".{name}.import"  # only when the cache cannot be used (someone else could write it)
    quiet = reporter.Reporter(None)  # its lines go to our log, shown only if this fails: the nodes print theirs
    try:
        source, temporary = step.import_image(replace(request, image=pinned(image, digest)), settings, quiet,
                                              scratch)
    except state.ReportedError:
        raise PyenrootError(f"the import of {image} failed here") from None
    try:
        size = source.stat().st_size
        _sbcast(request, source, target / name, report)
    finally:
        if temporary:
            with contextlib.suppress(OSError):
                source.unlink()
    return Broadcast(path=str(target / name), size=size, digest=digest, image=image)


def _sbcast(request: state.StepRequest, source: Path, destination: Path, report: reporter.Reporter) -> None:
    """Slurm's own broadcast (a tree of slurmd) to the nodes of this step only; a node it misses imports
    the image itself, so a partial failure is only reported."""
    argv = ["sbcast", "--force", f"--jobid={request.job}.{request.step}", str(source), str(destination)]
    try:
        tools.check(argv, "broadcast the image", hint="install slurm-client")
    except PyenrootError as exc:
        report.log(f"fanout: {exc.message}; nodes without the image import it themselves")


# ------------------------------------------------------------------------------------------------ each node


def receive(request: state.StepRequest, report: reporter.Reporter) -> Path | None:
    """The broadcast image if it is whole and this step's own; else None (the node imports the image itself,
    after one line saying why) and a copy of ours is removed. Called only when srun sent something."""
    found = Broadcast.decode(request.broadcast or "")
    if found is None:
        report.log("fanout: the broadcast image was not described properly; importing it on this node")
        return None
    problem = _check(found, request)
    if problem is None:
        return Path(found.path)
    report.log(f"fanout: not using the broadcast image on {os.uname().nodename}: {problem}; "
               "importing it on this node")
    discard_unused(request, None)
    return None


def _check(found: Broadcast, request: state.StepRequest) -> str | None:
    path = Path(found.path)
    try:
        size = os.lstat(path).st_size
    except OSError:
        size = None
    problem = problem_with(found, request, os.getuid(), size)
    if problem is None:
        problem = trust.untrusted(path, "file")
    if problem is None:
        try:
            squashfs.check_image(path)
        except PyenrootError as exc:
            problem = exc.message
    return problem


def discard_unused(request: state.StepRequest, kept: str | None) -> None:
    """Remove this step's broadcast image unless the step keeps it (`kept`, then cleanup removes it): only a
    file of the user's own under the name made for this step, whatever the description says."""
    found = Broadcast.decode(request.broadcast or "")
    if found is None or found.path == kept:
        return
    if os.path.basename(found.path) != broadcast_name(os.getuid(), request.job, request.step, found.digest):
        return
    with contextlib.suppress(OSError):
        if os.lstat(found.path).st_uid == os.getuid():
            os.unlink(found.path)
