"""The Python side of the SPANK plugin: one container per step and node, prepared and started as the job user.

`prepare_start` decides (names, scope, reuse, import, create) and leaves a stopped anchor process behind that
the plugin's tasks join; `cleanup` runs when the step's last local task exits (save, remove unnamed
containers); `epilog` removes job-scoped named containers at the end of the job. Messages keep pyxis's
wording, since users' scripts look for them. Results go to the plugin over fd 3, one `KIND TEXT` line each
(`reporter.py`); the request and state values are in `state.py`, the pure translation of options in `translate.py`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from pyenroot import tools
from pyenroot.errors import PyenrootError
from pyenroot.record import replace
from pyenroot.runtime.fstab import FstabEntry
from pyenroot.slurm.reporter import Reporter
from pyenroot.slurm.state import (
    ContainerName,
    ReportedError,
    StepError,
    StepRequest,
    StepState,
    job_list_path,
    load_state,
    private_runtime,
    remember_job_container,
    remember_resolved_image,
    resolved_image,
    save_state,
    state_path,
    user_runtime,
)
from pyenroot.slurm.translate import (
    container_name,
    docker_uri,
    is_path_image,
    mount_entries,
    resolve_path,
    save_target,
    setting_overrides,
    start_options,
)

# ------------------------------------------------------------------------------------------------ actions


def _import_to(uri: str, output: Path, settings) -> Path:
    """Import `uri` into the squashfs file `output`, in this process (no second interpreter start)."""
    from pyenroot.image.importer import import_image

    return import_image(uri, str(output), None, settings)


def _import_image(request: StepRequest, settings, report: Reporter, temp_output: Path) -> tuple[Path, bool]:
    """(squashfs, temporary?). An image in the site's image store is started from there. An image built before
    (same manifest digest, platform and options) is not rebuilt:
    steps of every node use the built-image cache's file, and the first builds it while the others wait. The
    step holds the entry (a shared lock its container inherits), so that `cache prune` leaves it alone. A tag
    that an earlier step of the job resolved on this node is not resolved again (`state.resolved_image`)."""
    from pyenroot.image import cached_images

    image = request.image or ""
    # Both lines every time, also from the cache: scripts count them and read what follows them.
    report.log(f"importing docker image: {image}")
    if request.importer:
        return _run_importer(request, report, image), False
    uri = docker_uri(image)
    from pyenroot.image.built import BuiltImages

    problem = BuiltImages.of(settings).unusable()
    if problem:
        report.log(f"not using the squashfs cache: {problem}")
    try:
        # The site's image store first (PYENROOT_IMAGE_STORE), then the user's cache.
        built = cached_images.build_into_cache(uri, None, settings, inheritable=True,
                                               known=resolved_image(request, uri))
        if built is not None:
            output, temporary = built.path, False
            _remember(request, uri, built.identity)
            if settings.get("PYENROOT_CACHE_MAX_SIZE"):  # (the importer loads only when there is a limit)
                from pyenroot.image import importer

                importer.prune_to_limit(settings)
        else:  # a cache someone else could have written: a file of the step's own (the store was asked already)
            with contextlib.suppress(FileNotFoundError):
                temp_output.unlink()
            _import_to(uri, temp_output, settings.overridden(PYENROOT_IMAGE_STORE=None))
            output, temporary = temp_output, True
    except PyenrootError as exc:
        report.error(f"failed to import docker image: {image}")
        report.log(f"    {exc.message}")
        raise ReportedError("import failed") from None
    report.log(f"imported docker image: {image}")
    return output, temporary


def _remember(request: StepRequest, uri: str, identity: tuple[str, str]) -> None:
    """For the job's later steps on this node (a failure only costs them a manifest request)."""
    with contextlib.suppress(OSError, PyenrootError):
        remember_resolved_image(request, uri, identity)


def import_image(request: StepRequest, settings, report: Reporter, temp_output: Path) -> tuple[Path, bool]:
    """(squashfs, temporary?), as a step imports its image: also srun's, when it fans the image out."""
    return _import_image(request, settings, report, temp_output)


def _received_image(request: StepRequest, report: Reporter) -> Path | None:
    """The image srun broadcast to this node, if it arrived whole (else the node imports it itself)."""
    if not request.broadcast:
        return None
    from pyenroot.slurm import fanout

    image = fanout.receive(request, report)
    if image is not None:
        # Both lines, as for every import: scripts count them.
        report.log(f"importing docker image: {request.image}")
        report.log(f"imported docker image: {request.image}")
    return image


def _run_importer(request: StepRequest, report: Reporter, image: str) -> Path:
    assert request.importer
    done = tools.run([request.importer, "get", docker_uri(image)])
    if done.returncode != 0:
        report.error(f"importer get failed with exit code {done.returncode}")
        for line in done.stderr.splitlines():
            report.error(f"    {line}")
        report.error(f"failed to import docker image: {image} (importer: {request.importer})")
        raise ReportedError("import failed")
    first = (done.stdout.splitlines() or [""])[0].strip()
    if not first:
        report.error("importer did not return a squashfs path")
        raise ReportedError("import failed")
    report.log(f"imported docker image: {image}")
    return Path(first)


def _create(settings, image: Path, name: str, request: StepRequest, report: Reporter) -> bool:
    """Unpack `image` as container `name`; False if a concurrent step created it first (then it is reused)."""
    from pyenroot.containers.create import create_container
    from pyenroot.containers.names import container_names

    report.info("creating container filesystem")
    try:
        create_container(settings, image, name)
        return True
    except PyenrootError as exc:
        if name in container_names(settings):
            return False  # a concurrent step (maybe on another node) created it: reuse it
        failure = exc.message
    report.error(f"failed to create container filesystem for image: {request.image}")
    report.log(f"    {failure}")
    raise ReportedError("create failed")


def _uts(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/uts").st_ino
    except OSError:
        return None


def _parent(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def on_this_node(pid: int) -> bool:
    """Whether a container process runs on this node. Nodes sharing one kernel (the local test cluster) see
    each other's processes; each node has its own UTS namespace, which the container or its parent shares."""
    own = _uts("self")
    parent = _parent(pid)
    return own is not None and (_uts(pid) == own or (parent is not None and _uts(parent) == own))


def _check_flags(cname: ContainerName, exists: bool, running: list[int], request: StepRequest) -> None:
    if cname.flag == "create" and exists:
        raise StepError('error: "create" flag was passed to --container-name but the container already exists')
    if cname.flag == "exec" and not exists:
        raise StepError(f'error: "exec" flag was passed to --container-name but the container "{cname.name}" '
                        "does not exist")
    if cname.flag == "exec" and not running:
        raise StepError('error: "exec" flag was passed to --container-name but the container is not running')
    if cname.named and not exists and not request.image:
        raise StepError(f'error: a container with name "{cname.name}" does not exist, and --container-image is '
                        "not set")


def running_step(request: StepRequest, cname: ContainerName, settings) -> StepState | None:
    """The state of the running step whose unnamed container `cname` names (`--container-name=JOB.STEP`) on
    this node, if that container runs without a directory of its own (started straight from a squashfs)."""
    from pyenroot.containers.discovery import running_containers

    job, dot, step_id = cname.name.rpartition("_")[2].partition(".")
    if not (dot and job.isdigit() and step_id.isdigit()):
        return None
    other = replace(request, job=int(job), step=int(step_id), name=None)
    if container_name(other).name != cname.name:
        return None
    state = load_state(other)
    if state is None or state.anchor is None or state.target is None or not os.path.isabs(state.target):
        return None
    try:  # the anchor still runs in a container's mount namespace (not a reused PID)
        anchor_mnt = os.stat(f"/proc/{state.anchor}/ns/mnt").st_ino
    except OSError:
        return None
    containers = {p.mntns for p in running_containers(settings)}
    return state if anchor_mnt in containers and on_this_node(state.anchor) else None


def prepare(request: StepRequest, settings, report: Reporter) -> tuple[str, StepState, list[FstabEntry]]:
    """Make sure the container filesystem exists; return the start target, the cleanup state and mounts."""
    from pyenroot.containers.discovery import running_pids
    from pyenroot.containers.names import container_names, data_path

    cname = container_name(request)
    state = StepState(cname.name, cname.named, save=save_target(request))
    exists = cname.name in container_names(settings)
    running = [pid for pid in running_pids(settings, cname.name) if on_this_node(pid)] if (
        exists and cname.flag in ("auto", "exec")) else []
    target = cname.name
    other_step = running_step(request, cname, settings) if (
        cname.named and not exists and cname.flag in ("auto", "exec")) else None
    if other_step is not None:  # this step's anchor starts the same image; the tasks join the running one
        exists, running, target = True, [other_step.anchor or 0], other_step.target or ""
    _check_flags(cname, exists, running, request)
    mounts = mount_entries(request.mounts, request.cwd)
    if running:
        report.log("reusing existing container namespaces")
        report.join(running[0])
        if mounts:
            report.log("ignoring --container-mounts when attaching to a running container")
            mounts = []
    elif exists:
        report.log("reusing existing container filesystem")
    if exists:
        return target, state, mounts
    direct = request.squashfuse and not cname.named and not state.save
    if is_path_image(request.image or ""):
        image = Path(resolve_path(request.image or "", request.cwd, "--container-image"))
        if not image.is_file():
            raise StepError(f"failed to create container filesystem for image: {request.image}: no such file")
        if direct:
            return str(image), state, mounts
    else:
        received = _received_image(request, report)
        image, temporary = (received, True) if received else _import_image(
            request, settings, report, user_runtime(request) / f"{request.step_label}.sqsh")
        state.importer = request.importer
        state.squashfs = str(image) if temporary else None
        state.broadcast = received is not None
        if direct:
            return str(image), state, mounts
    state.created = _create(settings, image, cname.name, request, report)
    if state.squashfs:
        with contextlib.suppress(OSError):
            os.unlink(state.squashfs)
        state.squashfs = None
    if cname.named and request.scope == "job":
        remember_job_container(request, data_path(settings), cname.name)
    return cname.name, state, mounts


def _unprivileged(settings) -> bool:
    return not (os.getuid() == 0 and settings.flag("ENROOT_ALLOW_SUPERUSER"))


def start_step(request: StepRequest, settings, report: Reporter) -> int:
    """Prepare, report, then become the container's anchor (this process execs into it)."""
    from pyenroot.runtime import assemble, seccomp

    state: StepState | None = None
    try:
        target, state, mounts = prepare(request, settings, report)
    finally:  # a broadcast image the step did not take (its container existed, or it failed) goes now
        if request.broadcast:
            from pyenroot.slurm import fanout

            fanout.discard_unused(request, state.squashfs if state else None)
    settings = settings.overridden(**setting_overrides(request))
    options = start_options(request, target, mounts, {**os.environ, **settings.environ()})
    state.target, state.anchor = target, os.getpid()  # this process becomes the anchor (start execs)
    save_state(request, state)
    if _unprivileged(settings):
        with contextlib.suppress(ValueError):
            report.seccomp(seccomp.filter_program(os.uname().machine))
    if state.broadcast and state.squashfs:
        report.unlink(state.squashfs)
    if needs_cleanup(state):
        report.cleanup()
    report.info(f"starting container: {target}")
    report.close()
    return assemble.start(options, settings)


def needs_cleanup(state: StepState) -> bool:
    """Whether step end needs `spank cleanup`; the plugin itself deletes the per-step state."""
    return bool(state.save or (state.created and not state.named) or state.importer or
                (state.squashfs and not state.broadcast))


def cleanup_step(request: StepRequest, settings, report: Reporter, *, incomplete: bool = False) -> int:
    """At step end on this node: --container-save, then remove what the step made for itself."""
    from pyenroot.containers.export import export_container
    from pyenroot.containers.remove import remove_container

    state = load_state(request)
    if state is None:
        return 0
    failed = False
    if state.save and not incomplete:
        try:
            export_container(settings, state.name, state.save, force=True)
            report.log(f"exported container {state.name} to {state.save}")
        except PyenrootError as exc:
            report.error(f"failed to export container {state.name} to {state.save}: {exc.message}")
            failed = True
    if state.created and not state.named:
        report.info(f"removing container filesystem: {state.name}")
        try:
            remove_container(settings, state.name)
        except PyenrootError as exc:
            report.info(f"couldn't remove container {state.name}: {exc.message}")
    if state.importer:
        tools.run([state.importer, "release"])
    for leftover in (state.squashfs, str(state_path(request))):
        if leftover:
            with contextlib.suppress(OSError):
                os.unlink(leftover)
    return 1 if failed else 0


def epilog(job: int, runtime_path: str, environ: Mapping[str, str], report: Reporter) -> int:
    """At job end: remove the job-scoped named containers recorded on this node."""
    from pyenroot.config import load_settings
    from pyenroot.containers.names import container_names
    from pyenroot.containers.remove import remove_container

    listing = job_list_path(private_runtime(runtime_path), job)
    try:
        entries = [line.split("\t", 1) for line in listing.read_text().splitlines() if "\t" in line]
    except OSError:
        return 0
    status = 0
    for data_path, name in dict.fromkeys(tuple(e) for e in entries):
        settings = load_settings({**environ, "ENROOT_DATA_PATH": data_path})
        try:
            if name in container_names(settings):
                remove_container(settings, name)
        except PyenrootError:
            report.error(f"epilog: container {name} was not removed")
            status = 1
    with contextlib.suppress(OSError):
        listing.unlink()
    return status
