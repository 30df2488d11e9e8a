"""What a Slurm step is about, as values: the plugin's request, the container's name, the state cleanup reads
back at step end, and the node-local files that hold it (the user's own runtime directory).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pyenroot import trust
from pyenroot.atomic import write_atomically
from pyenroot.errors import PyenrootError

BATCH_STEP = 0xFFFFFFFB  # SLURM_BATCH_SCRIPT


class StepError(PyenrootError):
    """A step cannot get its container; the message is shown to the srun user as is."""

    reference = "slurm"


class ReportedError(StepError):
    """A failure whose messages were already sent to the plugin."""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class ContainerName:
    name: str  # the container's name in ENROOT_DATA_PATH
    flag: str  # auto | create | exec | no_exec
    named: bool  # named containers persist (by scope); unnamed ones are removed at step end


@dataclass
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
    write_atomically(state_path(request), json.dumps(asdict(state)))


def load_state(request: StepRequest) -> StepState | None:
    try:
        return StepState(**json.loads(state_path(request).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def remember_job_container(request: StepRequest, data_path: Path, name: str) -> None:
    """Job-scoped containers are removed by the epilog, which has no job environment: record where they live."""
    with open(job_list_path(user_runtime(request), request.job), "a") as handle:
        handle.write(f"{data_path}\t{name}\n")

