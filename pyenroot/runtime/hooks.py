"""Start hooks: built-in Python functions first, then the executables of SYSCONF and CONFIG `hooks.d`.

Built-ins are listed in an ordered table and imported only when they run. A file in a hooks.d directory
named like a built-in (`10-shadow.sh`) replaces it; an empty or non-executable one switches it off. Scripts
see ENROOT_PID, ENROOT_ROOTFS, ENROOT_ENVIRON and ENROOT_MOUNTS as with enroot; whatever they append to
the environment and mounts files is read back. A failing hook aborts the start.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pyenroot.errors import PyenrootError, RuntimeStartError
from pyenroot.record import record
from pyenroot.runtime import environ as envdialect
from pyenroot.runtime.hookapi import HookContext
from pyenroot.runtime.plan import config_files

BUILTIN_HOOKS: tuple[tuple[str, str], ...] = (
    ("10-aptfix", "pyenroot.runtime.builtin_hooks:aptfix"),
    ("10-cgroups", "pyenroot.runtime.builtin_hooks:cgroups"),
    ("10-devices", "pyenroot.runtime.builtin_hooks:devices"),
    ("10-home", "pyenroot.runtime.builtin_hooks:home"),
    ("10-localtime", "pyenroot.runtime.builtin_hooks:localtime"),
    ("10-shadow", "pyenroot.runtime.builtin_hooks:shadow"),
    ("50-slurm-pmi", "pyenroot.runtime.builtin_hooks:slurm_pmi"),
    ("60-mpi", "pyenroot.mpi.hook:mpi_hook"),
    ("98-nvidia", "pyenroot.gpu.hook:nvidia_hook"),
)


def _wants_gpu(ctx: HookContext) -> bool:
    value = ctx.host_environ.get("NVIDIA_VISIBLE_DEVICES") or ctx.environ.get("NVIDIA_VISIBLE_DEVICES")
    return bool(value) and value != "void"


def _in_slurm_step(ctx: HookContext) -> bool:
    return bool(ctx.host_environ.get("SLURM_STEP_ID"))


def _wants_host_mpi(ctx: HookContext) -> bool:
    return bool(ctx.environ.get("PYENROOT_MPI") or ctx.host_environ.get("PYENROOT_MPI"))


# Cheap checks that save importing a hook that would do nothing.
_GUARDS: dict[str, Callable[[HookContext], bool]] = {"98-nvidia": _wants_gpu, "50-slurm-pmi": _in_slurm_step,
                                                     "60-mpi": _wants_host_mpi}


@record(frozen=True)
class HookStep:
    name: str  # file name, or the built-in's table name
    target: str | None = None  # "module:function" of a built-in
    path: Path | None = None  # executable of a hooks.d directory


def _scripts(directory: Path | None) -> dict[str, Path]:
    if directory is None:
        return {}
    try:  # a missing or unreadable directory holds no hooks, as for environ.d and mounts.d
        return {e.name: Path(e.path) for e in os.scandir(directory) if e.name.endswith(".sh") and not e.is_dir()}
    except OSError:
        return {}


def hook_steps(system_dir: Path | None, user_dir: Path | None,
               builtins: Sequence[tuple[str, str]] = BUILTIN_HOOKS) -> list[HookStep]:
    """Built-ins (unless a hooks.d file of the same name replaces them), system hooks, user hooks."""
    table = dict(builtins)
    system, user = _scripts(system_dir), _scripts(user_dir)
    names = {f"{name}.sh": name for name in table}
    ordered = config_files(names, system, user)
    steps = []
    for where, name in ordered:
        if where == "builtin":
            steps.append(HookStep(names[name], target=table[names[name]]))
        else:
            path = (system if where == "system" else user)[name]
            if os.access(path, os.X_OK):
                steps.append(HookStep(name, path=path))
    return steps


def _builtin_module(module_name: str):
    """The module of a built-in, or None when it is not part of this installation."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None
        raise


def _load(target: str) -> Callable[[HookContext], None] | None:
    module_name, _, function = target.partition(":")
    module = _builtin_module(module_name)
    return None if module is None else getattr(module, function)


def prepare(steps: Sequence[HookStep], outer_uid: int, outer_gid: int) -> None:
    """Do ahead what the built-in steps will need from the host, while something else is waited for (an image's
    mount): import their modules and let each that has a `prepare(outer_uid, outer_gid)` look up what it reads
    from the host. Guarded steps are left alone; so is any failure, which the step itself meets and reports."""
    modules = {s.target.partition(":")[0] for s in steps if s.target is not None and s.name not in _GUARDS}
    for module_name in sorted(modules):
        try:
            warm_up = getattr(_builtin_module(module_name), "prepare", None)
            if warm_up is not None:
                warm_up(outer_uid, outer_gid)
        except (ImportError, OSError):
            continue


def _run_builtin(step: HookStep, ctx: HookContext) -> None:
    guard = _GUARDS.get(step.name)
    if guard is not None and not guard(ctx):
        return
    assert step.target is not None
    function = _load(step.target)
    if function is None:
        return
    try:
        function(ctx)
    except PyenrootError as error:
        raise RuntimeStartError(f"hook {step.name} failed: {error.message}", hint=error.hint) from None
    except OSError as error:
        raise RuntimeStartError(f"hook {step.name} failed: {error}") from None


def run_external(argv: Sequence[str], name: str, ctx: HookContext, workdir: Path,
                 extra_env: Mapping[str, str] | None = None, *, keep_capabilities: Callable[[], None]) -> None:
    """Run one executable hook with the ENROOT_* interface, then read back what it appended.
    `keep_capabilities` runs in the hook's process before it executes (Syscalls.keep_capabilities_across_exec)."""
    environ_file, mounts_file = workdir / "environment", workdir / "fstab"
    environ_file.write_text(envdialect.render(ctx.environ))
    mounts_file.write_text("".join(line + "\n" for line in ctx.mounts))
    env = dict(ctx.host_environ)
    env.update(extra_env or {})
    env.update(ENROOT_PID=str(ctx.pid), ENROOT_ROOTFS=str(ctx.rootfs), ENROOT_ENVIRON=str(environ_file),
               ENROOT_MOUNTS=str(mounts_file))
    from pyenroot import tools  # only when there are hook executables: keeps a plain start free of it

    result = tools.run(list(argv), env=env, stdout=tools.DEVNULL, stderr=tools.INHERIT, cwd="/",
                       child_setup=keep_capabilities)
    if result.returncode != 0:
        raise RuntimeStartError(f"hook {name} exited with return code {result.returncode}")
    ctx.environ.clear()
    ctx.environ.update(envdialect.merge([envdialect.parse(environ_file.read_text())]))
    ctx.mounts[:] = [line for line in mounts_file.read_text().splitlines() if line.strip()]


def run_hooks(steps: Sequence[HookStep], ctx: HookContext, workdir: Path, *,
              keep_capabilities: Callable[[], None]) -> None:
    for step in steps:
        if step.target is not None:
            _run_builtin(step, ctx)
        elif step.path is not None:
            run_external([str(step.path)], step.name, ctx, workdir, keep_capabilities=keep_capabilities)
