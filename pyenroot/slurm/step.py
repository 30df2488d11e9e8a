"""The Python side of the SPANK plugin: one container per step and node, prepared and started as the job user.

`prepare_start` decides (names, scope, reuse, import, create) and leaves a stopped anchor process behind that
the plugin's tasks join; `cleanup` runs when the step's last local task exits (save, remove unnamed
containers); `epilog` removes job-scoped named containers at the end of the job. Messages keep pyxis's
wording, since users' scripts look for them. Results go to the plugin over fd 3, one `KIND TEXT` line each.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pyenroot import tools, trust
from pyenroot.atomic import write_atomically
from pyenroot.errors import PyenrootError
from pyenroot.runtime import environ as envdialect
from pyenroot.runtime import fstab, plan
from pyenroot.runtime.fstab import FstabEntry
from pyenroot.runtime.options import StartOptions

BATCH_STEP = 0xFFFFFFFB  # SLURM_BATCH_SCRIPT
ANCHOR_COMMAND = ("sh", "-c", "kill -STOP $$ ; exit 0")
NAME_FLAGS = ("auto", "create", "exec", "no_exec")
MOUNTS_ORIGIN = "--container-mounts"


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


# ------------------------------------------------------------------------------------------------ pure


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


# ------------------------------------------------------------------------------------------------ reporting


class Reporter:
    """Result lines for the plugin (fd 3); without the plugin (tests, manual runs) they go to stderr."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def _write(self, kind: str, text: str) -> None:
        line = f"{kind} {text.replace(chr(10), ' ')}\n"
        if self.fd is None:
            sys.stderr.write(line)
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, line.encode())

    def log(self, text: str) -> None:
        self._write("log", text)

    def info(self, text: str) -> None:
        self._write("info", text)

    def error(self, text: str) -> None:
        self._write("error", text)

    def join(self, pid: int) -> None:
        self._write("join", str(pid))

    def seccomp(self, program: bytes) -> None:
        self._write("seccomp", program.hex())

    def cleanup(self) -> None:
        self._write("cleanup", "1")

    def broadcast(self, description: str) -> None:
        self._write("broadcast", description)

    def unlink(self, path: str) -> None:
        self._write("unlink", path)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def result_reporter(environ: dict[str, str] | None = None) -> Reporter:
    """The pipe the plugin names in PYENROOT_SPANK_RESULT_FD (taken out of the environment, which the
    container inherits), else stderr (manual runs)."""
    environ = os.environ if environ is None else environ
    try:
        fd = int(environ.pop("PYENROOT_SPANK_RESULT_FD", ""))
        os.fstat(fd)
    except (ValueError, OSError):
        return Reporter(None)
    os.set_inheritable(fd, False)  # the container must not keep the plugin waiting
    return Reporter(fd)


# ------------------------------------------------------------------------------------------------ files


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


# ------------------------------------------------------------------------------------------------ actions


def _import_to(uri: str, output: Path, settings) -> Path:
    """Import `uri` into the squashfs file `output`, in this process (no second interpreter start)."""
    from pyenroot.image.importer import import_image

    return import_image(uri, str(output), None, settings)


def _import_image(request: StepRequest, settings, report: Reporter, temp_output: Path) -> tuple[Path, bool]:
    """(squashfs, temporary?). An image in the site's image store is started from there. An image built before
    (same manifest digest, platform and options) is not rebuilt:
    steps of every node use the built-image cache's file, and the first builds it while the others wait. The
    step holds the entry (a shared lock its container inherits), so that `cache prune` leaves it alone."""
    from pyenroot.image import importer

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
        built = importer.build_into_cache(uri, None, settings, inheritable=True)
        if built is not None:
            output, temporary = built.path, False
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


def import_image(request: StepRequest, settings, report: Reporter, temp_output: Path) -> tuple[Path, bool]:
    """(squashfs, temporary?), as a step imports its image: also srun's, when it fans the image out."""
    return _import_image(request, settings, report, temp_output)


def _received_image(request: StepRequest, report: Reporter) -> Path | None:
    """The image srun broadcast to this node, if it arrived whole (else the node imports it itself)."""
    from pyenroot.slurm import fanout

    image = fanout.receive(request, report) if request.broadcast else None
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
    from pyenroot.store.create import create_container
    from pyenroot.store.names import container_names

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
    from pyenroot.store.discovery import running_containers

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
    from pyenroot.store.discovery import running_pids
    from pyenroot.store.names import container_names, data_path

    cname = container_name(request)
    state = StepState(cname.name, cname.named, save=_save_target(request))
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


def _save_target(request: StepRequest) -> str | None:
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
    from pyenroot.store.export import export_container
    from pyenroot.store.remove import remove_container

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
    from pyenroot.store.names import container_names
    from pyenroot.store.remove import remove_container

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
