"""The srun options of a step translated, without side effects, into what pyenroot starts: the container's
name (pyxis naming), the image URI, `--container-mounts` as fstab entries (pyxis's rules and messages), the
environment and the `StartOptions` of the step's anchor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from pyenroot.runtime import environ as envdialect
from pyenroot.runtime import fstab, plan
from pyenroot.runtime.fstab import FstabEntry
from pyenroot.runtime.options import StartOptions
from pyenroot.slurm.state import BATCH_STEP, ContainerName, StepError, StepRequest

ANCHOR_COMMAND = ("sh", "-c", "kill -STOP $$ ; exit 0")
NAME_FLAGS = ("auto", "create", "exec", "no_exec")
MOUNTS_ORIGIN = "--container-mounts"


def container_name(request: StepRequest) -> ContainerName:
    """pyxis naming: pyxis_NAME (global) or pyxis_JOB_NAME (job); unnamed: pyxis_[JOB_]JOB.STEP."""
    prefix = "pyxis_" if request.scope == "global" else f"pyxis_{request.job}_"
    if request.name:
        base, _, flag = request.name.partition(":")
        flag = flag or "auto"
        if not base:
            raise StepError("--container-name: empty name")
        if flag not in NAME_FLAGS:
            raise StepError('--container-name: flag must be "auto", "create", "exec" or "no_exec"')
        return ContainerName(prefix + base, flag, True)
    return ContainerName(prefix + request.step_label, "auto", False)


def is_path_image(image: str) -> bool:
    return image.startswith((".", "/"))


def docker_uri(image: str) -> str:
    return image if image.startswith(("docker://", "dockerd://")) else f"docker://{image}"


def resolve_path(path: str, cwd: str | None, what: str) -> str:
    if os.path.isabs(path):
        return os.path.normpath(path)
    if not cwd:
        raise StepError(f"{what}: a relative path needs the job's working directory (PWD is not set)")
    return os.path.normpath(os.path.join(cwd, path))


def _mount_entry(entry: str) -> tuple[str, str, str]:
    """One `--container-mounts` entry, SRC[:DST[:FLAGS]], checked with pyxis's rules and messages."""
    src, colon, rest = entry.partition(":")
    dst, _, flags = rest.partition(":")
    dst = dst if colon else src
    if not src or not dst or any(c.isspace() for c in flags):
        raise StepError(f"--container-mounts: invalid format: {entry}")
    if not src.startswith((".", "/")) and src not in ("tmpfs", "umount"):
        raise StepError('--container-mounts: mount source must be a relative path, an absolute path, "tmpfs" '
                        'or "umount"')
    if not dst.startswith((".", "/")):
        raise StepError("--container-mounts: mount target must be a relative path or an absolute path")
    return src, dst, flags


def mount_entries(spec: str | None, cwd: str | None,
                  exists: Callable[[str], bool] = os.path.exists) -> list[FstabEntry]:
    """`--container-mounts` entries as fstab entries (pyxis semantics: defaults per source kind, '+' for ',').

    The plugin passes the value on unchecked: this is the one place that validates it, before any import."""
    if spec is None:
        return []
    if not spec or spec.startswith(",") or spec.endswith(",") or ",," in spec:
        raise StepError(f"--container-mounts: invalid format: {spec}")
    entries: list[FstabEntry] = []
    for item in spec.split(","):
        src, dst, flags = _mount_entry(item)
        if src == "tmpfs":
            source, fstype, defaults = "tmpfs", "tmpfs", "x-create=dir"
        elif src == "umount":
            source, fstype, defaults = "none", "none", "x-detach"
        else:
            source, fstype, defaults = resolve_path(src, cwd, "--container-mounts"), "none", "x-create=auto,rbind"
            if not exists(source):
                raise StepError(f"--container-mounts: source path does not exist: {source}")
        options = defaults + ("," + flags.replace("+", ",") if flags else "")
        entry = FstabEntry(source, dst, fstype, tuple(o for o in options.split(",") if o), 0, MOUNTS_ORIGIN)
        fstab.check_create(entry.options, MOUNTS_ORIGIN)
        if entry not in entries:
            entries.append(entry)
    return entries


def setting_overrides(request: StepRequest) -> dict[str, str]:
    """ENROOT_* settings the user asked for that are no start option; unset, the node's configuration rules."""
    if request.mount_home is None:
        return {}
    return {"ENROOT_MOUNT_HOME": "y" if request.mount_home else "n"}


def container_env(names: tuple[str, ...], host_environ: Mapping[str, str]) -> tuple[envdialect.EnvEntry, ...]:
    """--container-env: the named host variables that are set and not empty, with their host values.
    ENROOT_* names are reserved (as in environment files); a name no shell could have is skipped."""
    return tuple((name, host_environ[name]) for name in names
                 if envdialect.is_name(name) and not name.startswith("ENROOT_") and host_environ.get(name))


def start_options(request: StepRequest, target: str, mounts: list[FstabEntry],
                  host_environ: Mapping[str, str]) -> StartOptions:
    """What the step's anchor starts: the target, stopped at once (the tasks join it), with the user's mounts,
    environment and switches; a None switch leaves the node's settings in charge."""
    return StartOptions(
        target=target,
        command=ANCHOR_COMMAND,
        entrypoint=request.entrypoint,
        env=container_env(request.env_names, host_environ),
        mounts=tuple(plan.mount_from_entry(entry) for entry in [*mounts, *_batch_mount(request)]),
        remap_root=request.remap_root,
        writable=request.writable,
        namespaces=frozenset(request.unshare),
    )

def save_target(request: StepRequest) -> str | None:
    if not request.save:
        return None
    return resolve_path(request.save, request.cwd, "--container-save")


def _batch_mount(request: StepRequest) -> list[FstabEntry]:
    """The batch script, read-only at its own path, for the batch step (as pyxis does)."""
    if request.step != BATCH_STEP or not request.batch_script:
        return []
    path = request.batch_script
    return [FstabEntry(path, path, "none", ("x-create=file", "bind", "ro", "nosuid", "nodev", "private"), 0,
                       "--container-image (batch script)")]


