"""The files an import adds on top of every image, from its config: /etc/rc, /etc/rc.local, /etc/environment,
/etc/fstab (pure). They form the top-most layer, so they shadow the image's own, as in enroot's image format.
"""

from __future__ import annotations

import posixpath

RC_LOCAL = (
    "# Sourced by /etc/rc before the entrypoint runs (if not empty).\n"
    "# Change the command here, e.g. `set -- /bin/bash -l \"$@\"`, or export variables.\n"
)


def shell_quote(word: str) -> str:
    """Quote one word for sh, always in single quotes: spaces, quotes, `$`, backslashes stay literal."""
    return "'" + word.replace("'", "'\\''") + "'"


def _words(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # a config may hold a bare string where a list is specified
        return [value]
    return [str(v) for v in value]  # type: ignore[union-attr]


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())


def render_rc(config: dict, provenance: str) -> str:
    """/etc/rc: provenance and labels as comments, then the working directory and the command.

    Arguments given to the container replace Cmd (as `docker run IMAGE ARGS` does); Entrypoint stays.
    With neither Entrypoint nor Cmd the container runs /bin/sh.
    """
    inner = config.get("config") or {}
    entrypoint = _words(inner.get("Entrypoint"))
    cmd = _words(inner.get("Cmd"))
    if not entrypoint and not cmd:
        cmd = ["/bin/sh"]
    workdir = inner.get("WorkingDir") or "/"
    lines = [f"# enroot-provenance: {_one_line(provenance)}"]
    for key, value in sorted((inner.get("Labels") or {}).items()):
        lines.append(f"# {_one_line(key)} {_one_line(value)}")
    ep = " ".join(shell_quote(w) for w in entrypoint)
    with_args = f"{ep} \"$@\"" if ep else "\"$@\""
    default = " ".join(shell_quote(w) for w in entrypoint + cmd)
    lines += [
        "",
        f"mkdir -p {shell_quote(workdir)} 2> /dev/null",
        f"cd {shell_quote(workdir)} && unset OLDPWD || exit 1",
        "",
        "if [ -s /etc/rc.local ]; then",
        "    . /etc/rc.local",
        "fi",
        "",
        "if [ $# -gt 0 ]; then",
        f"    exec {with_args}",
        "else",
        f"    exec {default}",
        "fi",
    ]
    return "\n".join(lines) + "\n"


def render_environment(config: dict) -> tuple[str, list[str]]:
    """/etc/environment: the image's Env, one `NAME=value` per line; entries that cannot be lines are skipped."""
    kept, skipped = [], []
    for entry in _words((config.get("config") or {}).get("Env")):
        if "\n" in entry or "=" not in entry:
            skipped.append(entry.split("=", 1)[0])
            continue
        kept.append(entry)
    return "".join(f"{e}\n" for e in kept), skipped


def volume_path(volume: object) -> str:
    """A Volume as the path inside the image it names: `..` stops at the image's root, as it would there."""
    return posixpath.normpath("/" + str(volume).strip("/"))


def render_fstab(config: dict) -> str:
    """/etc/fstab: each declared volume bind-mounted onto itself, so it stays writable in the container.
    The start resolves `${ENROOT_ROOTFS}/...` within the root too, so an image's symlinks cannot lead out."""
    volumes = sorted((config.get("config") or {}).get("Volumes") or {})
    lines = []
    for path in dict.fromkeys(volume_path(v) for v in volumes):
        if path == "/" or any(c.isspace() for c in path):
            continue  # the root is no volume; fstab fields cannot hold blanks: such a volume is left out
        lines.append(f"${{ENROOT_ROOTFS}}{path} {path} none x-create=dir,bind,rw,nosuid,nodev")
    return "".join(f"{line}\n" for line in lines)


def workdir_of(config: dict) -> str | None:
    """The working directory to create in the image, when the config names one other than /."""
    workdir = (config.get("config") or {}).get("WorkingDir")
    if not workdir or str(workdir).strip("/") == "":
        return None
    return str(workdir)


def generated_files(config: dict, provenance: str) -> tuple[dict[str, bytes], list[str]]:
    """Path (relative to the image root) -> content of every generated file, plus warnings."""
    environment, skipped = render_environment(config)
    warnings = [f"environment variable {name!r} has a value that cannot be written to /etc/environment: skipped"
                for name in skipped]
    files = {
        "etc/rc": render_rc(config, provenance).encode(),
        "etc/rc.local": RC_LOCAL.encode(),
        "etc/environment": environment.encode(),
        "etc/fstab": render_fstab(config).encode(),
    }
    return files, warnings


def architecture_warning(config: dict, wanted: str | None) -> str | None:
    """A warning when the image was built for another architecture than the one asked for."""
    actual = config.get("architecture") or config.get("Architecture")
    if wanted and actual and actual != wanted:
        return f"image architecture is {actual}, not {wanted}"
    return None
