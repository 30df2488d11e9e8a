"""What a Slurm step is about, as values: the plugin's request, the container's name, the state cleanup reads
back at step end, and the node-local files that hold it (the user's own runtime directory), with the images
the job's earlier steps resolved there. `@record` values (pyenroot/record.py): a step imports no dataclasses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pyenroot import trust
from pyenroot.atomic import write_atomically
from pyenroot.errors import PyenrootError
from pyenroot.record import fields, record

BATCH_STEP = 0xFFFFFFFB  # SLURM_BATCH_SCRIPT


class StepError(PyenrootError):
    """A step cannot get its container; the message is shown to the srun user as is."""

    reference = "slurm"


class ReportedError(StepError):
    """A failure whose messages were already sent to the plugin."""


@record(frozen=True)
class StepRequest:
    """Everything the plugin passes for one step on one node (--container-workdir and
    --container-entrypoint-log are the plugin's own: it enters the directory and shows the log)."""

    job: int
    step: int
    total_tasks: int = 1
    scope: str = "global"
    runtime_path: str = "/run/pyenroot"
    squashfuse: bool = True
    importer: str | None = None
    cwd: str | None = None
    batch_script: str | None = None
    image: str | None = None
    name: str | None = None
    mounts: str | None = None
    save: str | None = None
    env_names: tuple[str, ...] = ()
    unshare: tuple[str, ...] = ()
    mount_home: bool | None = None
    remap_root: bool | None = None
    entrypoint: bool = False
    writable: bool | None = None
    broadcast: str | None = None  # srun's fan-out: the image it sent to this node (pyenroot/slurm/fanout.py)

    @property
    def step_label(self) -> str:
        return f"{self.job}.{self.step}"


@record(frozen=True)
class ContainerName:
    name: str  # the container's name in ENROOT_DATA_PATH
    flag: str  # auto | create | exec | no_exec
    named: bool  # named containers persist (by scope); unnamed ones are removed at step end


@record
class StepState:
    """What cleanup must do, written at start (node-local runtime directory) and read at step end."""

    name: str
    named: bool
    created: bool = False  # this step made the container filesystem (so an unnamed one is removed)
    squashfs: str | None = None  # a temporary image to delete
    broadcast: bool = False  # squashfs is srun's broadcast copy: the plugin deletes it without a cleanup run
    save: str | None = None
    importer: str | None = None
    target: str | None = None  # what the anchor started: a container name, or a squashfs started directly
    anchor: int | None = None  # its PID (this node)


def user_runtime(request: StepRequest) -> Path:
    """Node-local per-user directory (the plugin creates it 0700): per-step files never collide across nodes."""
    return private_runtime(request.runtime_path)


def private_runtime(runtime_path: str) -> Path:
    """The user's directory below the plugin's runtime path, checked to be the user's own: step state and
    the epilog's list of containers to remove are trusted by their names there."""
    path = Path(runtime_path) / str(os.getuid())
    if os.path.lexists(path):
        trust.check_private_dir(path, "the step's runtime directory")
    return path


def state_path(request: StepRequest) -> Path:
    return user_runtime(request) / f"step-{request.step_label}.json"


def job_list_path(runtime: Path, job: int) -> Path:
    return runtime / f"job-{job}.containers"


def save_state(request: StepRequest, state: StepState) -> None:
    write_atomically(state_path(request), json.dumps({name: getattr(state, name) for name in fields(state)}))


def load_state(request: StepRequest) -> StepState | None:
    try:
        return StepState(**json.loads(state_path(request).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def remember_job_container(request: StepRequest, data_path: Path, name: str) -> None:
    """Job-scoped containers are removed by the epilog, which has no job environment: record where they live."""
    with open(job_list_path(user_runtime(request), request.job), "a") as handle:
        handle.write(f"{data_path}\t{name}\n")



# ------------------------------------------------------------------------------------ images the job resolved

_DIGEST_LENGTH = len("sha256:") + 64


def job_images_path(runtime: Path, job: int) -> Path:
    """The tags this job's steps resolved on this node; the plugin deletes it when the job ends."""
    return runtime / f"job-{job}.images"


def _is_digest(value: object) -> bool:
    return (isinstance(value, str) and len(value) == _DIGEST_LENGTH and value.startswith("sha256:")
            and all(c in "0123456789abcdef" for c in value[7:]))


def _job_images(request: StepRequest) -> dict[str, list[str]]:
    try:
        data = json.loads(job_images_path(user_runtime(request), request.job).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {uri: value for uri, value in data.items() if isinstance(value, list) and len(value) == 2
            and _is_digest(value[0]) and isinstance(value[1], str)}


def resolved_image(request: StepRequest, uri: str) -> tuple[str, str] | None:
    """(the manifest digest, the provenance URI) an earlier step of this job resolved `uri` to on this node: a
    job sees one image per reference, and its later steps ask the registry nothing (docs/slurm.md)."""
    found = _job_images(request).get(uri)
    return (found[0], found[1]) if found else None


def remember_resolved_image(request: StepRequest, uri: str, identity: tuple[str, str]) -> None:
    """Record what `uri` resolved to for the job's later steps on this node; two steps that write at once
    lose one entry at worst (a later step then asks the registry again)."""
    images = _job_images(request)
    if images.get(uri) == list(identity):
        return
    images[uri] = list(identity)
    runtime = user_runtime(request)
    if os.path.isdir(runtime):
        write_atomically(job_images_path(runtime, request.job), json.dumps(images))
