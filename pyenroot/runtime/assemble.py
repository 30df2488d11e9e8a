"""Assembles a start: from a start's options and the settings to a `launcher.Launch` (the `Target` to start,
config dirs, config script, hooks), then hands it to the launcher.

`start(options, settings)` is what every start calls (`pyenroot start`, `batch`, a bundle, a Slurm step), with
a typed `options.StartOptions`. The flow of a start: the caller builds `StartOptions` (commands/start.py for
the CLI verb) → `assemble.start` reads settings and files into a `Launch` → `launcher.launch` plans it
(`plan.StartPlan`) and carries it out through the `Syscalls` seam, mounting a `.sqsh` with `imagemount`.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from pyenroot import trust
from pyenroot.errors import ConfigError, UsageError
from pyenroot.names import is_valid_name
from pyenroot.runtime.options import WRITABLE_METHODS, WRITABLE_UNPACK, StartOptions
from pyenroot.runtime.plan import StartRequest, config_files


def resolve_target(settings, target: str):
    """A squashfs image file (started directly) or the name of a created container."""
    from pyenroot.runtime.launcher import Target

    path_like = "/" in target or target.endswith(".sqsh")
    if path_like or os.path.isfile(target):
        from pyenroot import squashfs

        if path_like:
            return Target("squashfs", squashfs.check_image(target))
        if squashfs.is_squashfs(target):
            return Target("squashfs", Path(os.path.realpath(target)))
    fast = _plain_container(settings, target)
    if fast is not None:
        return Target("dir", fast)
    from pyenroot.containers.names import existing_container

    return Target("dir", existing_container(settings, target))


def _plain_container(settings, name: str) -> Path | None:
    """The common case without importing the store: a plainly valid name of an existing
    directory (names.py holds the one naming rule). Everything else goes through `containers/names.py`, which says what
    is wrong."""
    data = settings.get("ENROOT_DATA_PATH")
    if not data or not is_valid_name(name):
        return None
    path = Path(os.path.abspath(data)) / name
    # os.path: an unreadable data path is "not found" here, and the store then says what is wrong with it
    return path if not os.path.islink(path) and os.path.isdir(path) else None


def _settings_with_options(settings, options: StartOptions, directives: dict[str, str]):
    """The options beat configuration-script directives, which beat everything else."""
    yes_no = {True: "y", False: "n"}
    changes: dict[str, str | None] = dict(directives)
    for switch, name in ((options.remap_root, "ENROOT_REMAP_ROOT"), (options.writable, "ENROOT_ROOTFS_WRITABLE")):
        if switch is not None:
            changes[name] = yes_no[switch]
    for namespace in options.namespaces:
        changes[f"ENROOT_UNSHARE_{namespace.upper()}"] = "y"
    return settings.overridden(**changes) if changes else settings


def _dir_listing(directory: Path | None, suffix: str) -> dict[str, Path]:
    if directory is None:
        return {}
    try:
        return {e.name: Path(e.path) for e in os.scandir(directory) if e.name.endswith(suffix) and e.is_file()}
    except OSError:
        return {}


def _config_dir(settings, name: str) -> Path | None:
    value = settings.get(name)
    return Path(value) if value else None


def read_config_files(settings, subdir: str, suffix: str) -> tuple[tuple[str, str], ...]:
    """(path, text) of the built-in, system and user files of `subdir` (environ.d, mounts.d) in order."""
    where = {"builtin": "ENROOT_LIBRARY_PATH", "system": "ENROOT_SYSCONF_PATH", "user": "ENROOT_CONFIG_PATH"}
    listings = {}
    for key, setting in where.items():
        base = _config_dir(settings, setting)
        listings[key] = _dir_listing(base / subdir if base else None, suffix)
    result = []
    for key, name in config_files(listings["builtin"], listings["system"], listings["user"]):
        path = listings[key][name]
        try:
            result.append((str(path), path.read_text(errors="replace")))
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return tuple(result)


def _read_rc(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise UsageError(f"no such rc script: {path}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise UsageError(f"the rc script must be a file: {path}")
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read rc script {path}: {exc.strerror}") from None


# The init script of a start without the image's entrypoint (a Slurm step's default, as with pyxis): the
# command runs in the image's working directory, which the image's /etc/rc enters with a
# `cd DIR && unset OLDPWD` line.
WITHOUT_ENTRYPOINT_RC = """\
__workdir=$(sed -n "s/^cd \\(.*\\) && unset OLDPWD.*/\\1/p" /etc/rc 2>/dev/null | head -1)
if [ -n "$__workdir" ]; then eval "cd $__workdir" 2>/dev/null; fi
unset __workdir OLDPWD
exec "$@"
"""


def _rc_text(options: StartOptions, script) -> str | None:
    """The init script: --rc, else the config script's rc(), else the one without the entrypoint; None: the
    image's own (/etc/rc)."""
    if options.rc is not None:
        return _read_rc(str(options.rc))
    if script is not None and script.rc is not None:
        return script.rc
    return None if options.entrypoint else WITHOUT_ENTRYPOINT_RC


def warn_on_stderr(message: str) -> None:
    """How a start run from a command (the CLI, a bundle, a Slurm step) shows warnings."""
    import sys

    print(f"pyenroot: warning: {message}", file=sys.stderr)


def _writable_sqsh(settings) -> str:
    """PYENROOT_SQSH_WRITABLE, checked: how a writable start of a .sqsh image gets its root filesystem."""
    value = (settings.get("PYENROOT_SQSH_WRITABLE") or WRITABLE_UNPACK).strip().lower()
    if value not in WRITABLE_METHODS:
        raise ConfigError(f"invalid PYENROOT_SQSH_WRITABLE: {value!r}",
                          hint=f"use one of: {', '.join(WRITABLE_METHODS)}")
    return value


def _warn_about_environment(request: StartRequest, script_origin: str, warn: Callable[[str], None]) -> None:
    from pyenroot.runtime import environ as envdialect

    files = [*request.environ_files, (script_origin, request.script_environ)]
    for message in envdialect.source_warnings(files, request.env, request.host_environ):
        warn(message)


def host_login_name(host_environ: Mapping[str, str], uid: int) -> str:
    """The container's LOGNAME: the caller's LOGNAME or USER, else the name of its passwd entry on the host
    (read here, before the root changes), its uid only when it has none."""
    name = host_environ.get("LOGNAME") or host_environ.get("USER")
    if name:
        return name
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def start(options: StartOptions, settings, *, warn: Callable[[str], None] = warn_on_stderr,
          trace: Callable[[str], None] = lambda step: None) -> int:
    """Start `options.target` (a name or an image, or a launcher.Target: a bundle's unpacked root filesystem)."""
    command = list(options.command)
    script = None
    directives: dict[str, str] = {}
    if options.conf is not None:
        from pyenroot.runtime import configscript

        conf = options.conf
        configscript.check_syntax(conf)
        directives = configscript.directives(conf.read_text(errors="replace"), os.environ)
    settings = _settings_with_options(settings, options, directives)
    host_environ = {**os.environ, **settings.environ()}
    if options.conf is not None:
        script = configscript.evaluate(conf, command, host_environ)
    target = options.target if not isinstance(options.target, str) else resolve_target(settings, options.target)
    euid = os.geteuid()
    request = StartRequest(
        command=tuple(command),
        outer_uid=euid,
        outer_gid=os.getegid(),
        host_environ=host_environ,
        remap_root=settings.flag("ENROOT_REMAP_ROOT"),
        writable=settings.flag("ENROOT_ROOTFS_WRITABLE"),
        userns=not (euid == 0 and settings.flag("ENROOT_ALLOW_SUPERUSER")),
        unshare_pid=settings.flag("ENROOT_UNSHARE_PID"),
        unshare_net=settings.flag("ENROOT_UNSHARE_NET"),
        unshare_ipc=settings.flag("ENROOT_UNSHARE_IPC"),
        unshare_uts=settings.flag("ENROOT_UNSHARE_UTS"),
        login=settings.flag("ENROOT_LOGIN_SHELL"),
        init_shell=settings.get("ENROOT_INIT_SHELL") or "/bin/sh",
        environ_files=read_config_files(settings, "environ.d", ".env"),
        mount_files=read_config_files(settings, "mounts.d", ".fstab"),
        script_environ=script.environ if script else "",
        script_mounts=script.mounts if script else "",
        env=options.env,
        mounts=options.mounts,
        rc_text=_rc_text(options, script),
    )
    _warn_about_environment(request, f"environ() of {options.conf}", warn)
    from pyenroot.runtime import hooks, launcher

    sysconf, config = _config_dir(settings, "ENROOT_SYSCONF_PATH"), _config_dir(settings, "ENROOT_CONFIG_PATH")
    spec = launcher.Launch(
        target=target,
        request=request,
        # Made (0700) and checked here, outside the user namespace, where owners read truly: without
        # XDG_RUNTIME_DIR it is below /tmp, where another user may have made it first.
        runtime_path=trust.private_dir(settings.path("ENROOT_RUNTIME_PATH"), "the runtime directory",
                                       hint="set XDG_RUNTIME_DIR or ENROOT_RUNTIME_PATH to a directory of your own"),
        host_environ=host_environ,
        logname=host_login_name(host_environ, euid),
        hook_steps=hooks.hook_steps(sysconf / "hooks.d" if sysconf else None, config / "hooks.d" if config else None),
        script_hooks=configscript.hooks_argv(conf, command) if script and script.has_hooks else None,
        native_overlay=settings.flag("ENROOT_NATIVE_OVERLAYFS"),
        writable_sqsh=_writable_sqsh(settings),
        processors=settings.max_processors(),
        warn=warn,
        trace=trace,
    )
    trace("configuration read")
    return launcher.launch(spec)
