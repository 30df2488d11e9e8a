"""Settings: every ENROOT_* option with its default, read from enroot.conf, enroot.conf.d and the environment.

Precedence, lowest first: built-in default < SYSCONF/enroot.conf < SYSCONF/enroot.conf.d/*.conf (in name
order, a later file overriding an earlier one) < the process environment (non-empty values). The first
enroot releases spelled some settings differently; those spellings are accepted as aliases.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from pyenroot.errors import ConfigError
from pyenroot.record import factory, record

PACKAGE_DATA = Path(__file__).resolve().parent / "data"

# Values that switch a boolean setting off: enroot's words (it unsets these; anything else non-empty is "on"),
# and "off", which enroot would read as on although nobody who writes it means that.
FALSE_WORDS = frozenset({"n", "no", "N", "No", "NO", "f", "F", "false", "False", "FALSE", "off", "Off", "OFF", ""})

# Old spelling -> current name. Scripts written for the first enroot releases still use the old ones.
ALIASES: dict[str, str] = {
    "ENROOT_LIBEXEC_PATH": "ENROOT_LIBRARY_PATH",
    "ENROOT_GZIP_PROG": "ENROOT_GZIP_PROGRAM",
    "ENROOT_SQUASH_OPTS": "ENROOT_SQUASH_OPTIONS",
    "ENROOT_ROOTFS_RW": "ENROOT_ROOTFS_WRITABLE",
}

# Keys a settings file may set (enroot honours the same families).
_FILE_KEY = re.compile(
    r"^(ENROOT_[A-Z0-9_]+|PYENROOT_[A-Z0-9_]+|MELLANOX_\w+|NVIDIA_\w+|SSL_CERT_(?:DIR|FILE)"
    r"|all_proxy|no_proxy|http_proxy|https_proxy)$"
)
_VAR_REF = r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"  # compiled at first use


def default_runtime_dir(uid: int) -> str:
    """ENROOT_RUNTIME_PATH when nothing sets it."""
    user_run = Path(f"/run/user/{uid}")
    if user_run.is_dir() and os.access(user_run, os.W_OK):
        return str(user_run)
    return f"{os.environ.get('TMPDIR') or '/tmp'}/pyenroot-run-{uid}"


def _cpu_count() -> str:
    return str(len(os.sched_getaffinity(0)))


def find_program(name: str) -> str | None:
    """The path of executable `name` on PATH, as `shutil.which` finds it: a plain walk, because shutil (with
    bz2 and lzma) would cost every `start` an import."""
    for directory in (os.environ.get("PATH") or os.defpath).split(os.pathsep):
        path = os.path.join(directory, name)
        if directory and os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def _default_gzip() -> str:
    """The fastest gzip decompressor installed: igzip (ISA-L) inflates about 3x faster than zlib, which pigz
    and gzip use; on a node of few cores that leaves the squashfs compressor the CPU time."""
    return next((name for name in ("igzip", "pigz") if find_program(name)), "gzip")


@record(frozen=True)
class Setting:
    name: str
    default: str | None  # None: unset (off) unless configured
    description: str
    dynamic_default: str | None = None  # key of a computed default in _computed_defaults()


# Order matters: later defaults may refer to earlier settings with ${NAME}.
SETTINGS: tuple[Setting, ...] = (
    Setting("XDG_DATA_HOME", "${HOME}/.local/share", "base of ENROOT_DATA_PATH"),
    Setting("XDG_CONFIG_HOME", "${HOME}/.config", "base of ENROOT_CONFIG_PATH"),
    Setting("XDG_CACHE_HOME", "${HOME}/.cache", "base of ENROOT_CACHE_PATH"),
    Setting("XDG_RUNTIME_DIR", None, "base of ENROOT_RUNTIME_PATH (default /run/user/UID if writable, "
            "else $TMPDIR/pyenroot-run-UID)", "runtime_dir"),
    Setting("ENROOT_LIBRARY_PATH", str(PACKAGE_DATA), "built-in hooks, mounts and environment files"),
    Setting("ENROOT_SYSCONF_PATH", "/etc/enroot", "system configuration: enroot.conf, hooks.d, mounts.d, environ.d"),
    Setting("ENROOT_RUNTIME_PATH", "${XDG_RUNTIME_DIR}/enroot", "per-user runtime state"),
    Setting("ENROOT_CONFIG_PATH", "${XDG_CONFIG_HOME}/enroot", "user configuration and .credentials"),
    Setting("ENROOT_CACHE_PATH", "${XDG_CACHE_HOME}/enroot", "downloaded blobs, content-addressed, and built"
            " squashfs images (docs/import.md)"),
    Setting("ENROOT_DATA_PATH", "${XDG_DATA_HOME}/enroot", "container root filesystems, one per name"),
    Setting("ENROOT_TEMP_PATH", "${TMPDIR:-/tmp}", "temporary files"),
    Setting("ENROOT_GZIP_PROGRAM", None, "gzip decompressor (igzip if installed, else pigz, else gzip)", "gzip"),
    Setting("ENROOT_ZSTD_OPTIONS", "-1", "zstd options when recompressing"),
    Setting("ENROOT_SQUASH_OPTIONS", "-comp lz4", "squashfs build options (mksquashfs syntax)"),
    Setting("ENROOT_MAX_PROCESSORS", None, "CPUs used for import and unpack (default: CPUs this process may use;"
            " 0 = unlimited)", "cpus"),
    Setting("ENROOT_MAX_CONNECTIONS", "10", "concurrent downloads (0 = unlimited)"),
    Setting("ENROOT_CONNECT_TIMEOUT", "30", "seconds to establish a connection"),
    Setting("ENROOT_TRANSFER_TIMEOUT", "0", "seconds a transfer may take (0 = unlimited)"),
    Setting("ENROOT_TRANSFER_RETRIES", "3", "retries of a failed transfer"),
    Setting("ENROOT_LOGIN_SHELL", "true", "run the container's shell as a login shell"),
    Setting("ENROOT_INIT_SHELL", "/bin/sh", "shell that runs the init script /etc/rc"),
    Setting("ENROOT_NATIVE_OVERLAYFS", "true", "use kernel overlayfs where the kernel allows it"),
    Setting("PYENROOT_SQSH_WRITABLE", "unpack", "how --rw starts of a .sqsh image get their root: unpack (every "
            "rename works; costs time and memory as the image grows) or overlay (fast; renaming a directory of "
            "the image fails)"),
    Setting("ENROOT_ALLOW_SUPERUSER", "false", "let real root keep its privileges in containers"),
    Setting("ENROOT_ALLOW_HTTP", "false", "allow plain HTTP registries"),
    Setting("ENROOT_ROOTFS_WRITABLE", "false", "container root filesystem writable"),
    Setting("ENROOT_REMAP_ROOT", "false", "map the caller to root inside the container"),
    Setting("ENROOT_BUNDLE_ALL", "false", "bundle: include user configuration"),
    Setting("ENROOT_BUNDLE_CHECKSUM", "false", "bundle: verify a checksum at each run"),
    Setting("ENROOT_FORCE_OVERRIDE", "false",
            "replace an existing container (`create`, `load`, like `-f`) or output file (`import`, which has no "
            "`-f`; `export` and `bundle`, like `-f`), the new one taking the old one's place only when complete; "
            "`remove` does not ask"),
    Setting("ENROOT_MOUNT_HOME", None, "mount the caller's home directory"),
    Setting("ENROOT_RESTRICT_DEV", None, "give the container a minimal /dev"),
    Setting("ENROOT_UNSHARE_NET", None, "new network namespace"),
    Setting("ENROOT_UNSHARE_PID", None, "new PID namespace"),
    Setting("ENROOT_UNSHARE_IPC", None, "new IPC namespace"),
    Setting("ENROOT_UNSHARE_UTS", None, "new UTS namespace"),
    Setting("PYENROOT_CA_BUNDLE", None, "extra CA certificates (PEM) trusted for registries"),
    Setting("PYENROOT_REGISTRY_MIRRORS", None, "mirrors: 'REGISTRY=MIRROR[,MIRROR...]' entries separated by ';'"),
    Setting("PYENROOT_NVIDIA_ROOT", "/", "where the NVIDIA driver is looked up (/proc, /dev, libraries; tests use"
            " a fake tree)"),
    Setting("PYENROOT_FANOUT_DIR", "/tmp", "Slurm fan-out: a directory on every node (node-local, such as TmpFS) where"
            " srun's sbcast puts a step's image"),
    Setting("PYENROOT_MPI", None, "host: give containers the site's MPI and fabric from SYSCONF/mpi.conf (the "
            "60-mpi hook; docs/mpi.md); none or empty: the image's own"),
    Setting("PYENROOT_CACHE_OWNERS", None, "users (names or uids) besides you and root whose files in a shared"
            " ENROOT_CACHE_PATH are trusted"),
    Setting("PYENROOT_CACHE_MAX_SIZE", None, "when set (e.g. 50G), every import prunes ENROOT_CACHE_PATH down to"
            " this size afterwards, least recently used first"),
    Setting("PYENROOT_CACHE_LAYER_COPIES", "auto", "keep a zstd copy of each gzip layer next to its blob in"
            " ENROOT_CACHE_PATH, written while the layer is first merged, so that later builds decompress it"
            " several times faster (no: gzip blobs only; auto: copies are used, and written only when the gzip"
            " decompressor is not igzip, which is nearly as fast)"),
    Setting("PYENROOT_IMAGE_STORE", None, "a site-wide store of squashfs images (a directory its owner fills with"
            " `pyenroot store add`): imports and Slurm steps take an image from it when its digest is there"),
    Setting("PYENROOT_IMAGE_STORE_TTL", "0", "how long (e.g. 1h) a tag that `store add` resolved is taken from the"
            " store without asking the registry; 0: one manifest request each time"),
)
SETTING_NAMES = frozenset(s.name for s in SETTINGS)


def _computed_defaults(uid: int) -> dict[str, str]:
    return {"runtime_dir": default_runtime_dir(uid), "cpus": _cpu_count(), "gzip": _default_gzip()}


def expand_variables(value: str, lookup: Mapping[str, str]) -> str:
    """Expand $NAME, ${NAME} and ${NAME:-default} like a shell would; unset names become ''."""
    if "$" not in value:
        return value  # most values (each start expands every setting twice)

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        found = lookup.get(name, "")
        if not found and match.group(2) is not None:
            return match.group(2)
        return found

    return re.sub(_VAR_REF, replace, value)


def parse_settings_file(text: str, source: str) -> dict[str, str]:
    """Parse `KEY value` / `KEY=value` lines; values are not expanded yet. Unknown keys are ignored."""
    result: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = re.split(r"[\s=]+", line, maxsplit=1)
        key = parts[0]
        if not _FILE_KEY.match(key):
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ConfigError(f"invalid configuration file {source}, line {number}: {raw.strip()!r}")
            continue
        value = parts[1].strip() if len(parts) > 1 else ""
        result[ALIASES.get(key, key)] = _unquote(value)
    return result


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def is_true(value: str | None) -> bool:
    """The rule for ENROOT_*/PYENROOT_* settings (files, environment, batch directives), from enroot: unset or
    one of FALSE_WORDS is off, anything else is on (even '0', as in enroot). The SPANK plugin parses its own
    plugstack.conf words in C (`parse_bool`, which agrees on every off word), and its y/n arguments to
    `pyenroot spank` are read by `commands.spank.plugin_flag`."""
    return value is not None and value not in FALSE_WORDS


@record
class Settings:
    """The resolved settings; `values` holds every setting that is set, after expansion."""

    values: dict[str, str] = factory(dict)

    def get(self, name: str) -> str | None:
        return self.values.get(ALIASES.get(name, name))

    def flag(self, name: str) -> bool:
        return is_true(self.get(name))

    def path(self, name: str) -> Path:
        value = self.get(name)
        if not value:
            raise ConfigError(f"{name} is not set")
        return Path(value)

    def integer(self, name: str) -> int:
        value = self.get(name) or "0"
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, not {value!r}") from None

    def max_processors(self) -> int:
        """CPUs to use: ENROOT_MAX_PROCESSORS, where 0 means every CPU this process may run on."""
        wanted = self.integer("ENROOT_MAX_PROCESSORS")
        available = len(os.sched_getaffinity(0))
        return available if wanted <= 0 else min(wanted, available)

    def overridden(self, **changes: str | None) -> Settings:
        """A copy with some settings changed (None unsets), as CLI flags and directives do."""
        values = dict(self.values)
        for name, value in changes.items():
            name = ALIASES.get(name, name)
            if value is None or value in FALSE_WORDS:
                values.pop(name, None)
            else:
                values[name] = value
        return Settings(values)

    def environ(self) -> dict[str, str]:
        """Settings (ENROOT_*, and NVIDIA_*, proxies, ... from settings files) as environment variables, for hooks
        and child processes, as enroot exports them."""
        return {k: v for k, v in self.values.items() if _FILE_KEY.match(k)}


def _read_layer(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    from pyenroot import tools  # only when a settings file exists

    # enroot's files are shell syntax; keep rejecting what bash would reject.
    if text.strip() and tools.run(["bash", "-n", str(path)]).returncode != 0:
        raise ConfigError(f"invalid configuration file: {path}", hint="the file must be valid shell syntax")
    return parse_settings_file(text, str(path))


def _is_kind(path: Path, kind: Callable[[int], bool]) -> bool:
    """Whether `path` is there and of that kind; a path we may not even look at is an error, not 'absent'."""
    try:
        return kind(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint="check ENROOT_SYSCONF_PATH") from None


def _file_layers(sysconf: Path) -> list[dict[str, str]]:
    layers = []
    main_file = sysconf / "enroot.conf"
    if _is_kind(main_file, stat.S_ISREG):
        layers.append(_read_layer(main_file))
    dropins = sysconf / "enroot.conf.d"
    if _is_kind(dropins, stat.S_ISDIR):
        layers.extend(_read_layer(p) for p in sorted(dropins.glob("*.conf")) if _is_kind(p, stat.S_ISREG))
    return layers


def _environment_layer(environ: Mapping[str, str]) -> dict[str, str]:
    layer: dict[str, str] = {}
    # Aliases first so that the current spelling wins when both are set.
    for old, new in ALIASES.items():
        if environ.get(old):
            layer[new] = environ[old]
    for name, value in environ.items():
        if value and (name in SETTING_NAMES or _FILE_KEY.match(name)) and name not in ALIASES:
            layer[name] = value
    return layer


def load_settings(environ: Mapping[str, str] | None = None, uid: int | None = None) -> Settings:
    """Resolve every setting from defaults, settings files and the environment."""
    environ = dict(os.environ if environ is None else environ)
    uid = os.getuid() if uid is None else uid
    env_layer = _environment_layer(environ)
    sysconf = Path(env_layer.get("ENROOT_SYSCONF_PATH", "/etc/enroot"))
    file_values: dict[str, str] = {}
    for layer in _file_layers(sysconf):
        file_values.update(layer)

    computed = _computed_defaults(uid)
    resolved: dict[str, str] = {}
    lookup: dict[str, str] = dict(environ)
    # Two passes, so that a file value may refer to a setting listed after it.
    for setting in SETTINGS + SETTINGS:
        name = setting.name
        if name in env_layer:
            raw = env_layer[name]
        elif name in file_values:
            raw = expand_variables(file_values[name], lookup)
        elif setting.dynamic_default:
            raw = computed[setting.dynamic_default]
        elif setting.default is not None:
            raw = expand_variables(setting.default, lookup)
        else:
            continue
        resolved[name] = raw
        lookup[name] = raw
    # Keys outside the table (NVIDIA_*, proxies, unknown ENROOT_*) pass through, environment first.
    for name, value in file_values.items():
        if name not in SETTING_NAMES and name not in env_layer:
            resolved[name] = expand_variables(value, lookup)
    for name, value in env_layer.items():
        if name not in SETTING_NAMES:
            resolved[name] = value
    return Settings({k: v for k, v in resolved.items()})


def settings_table_markdown() -> str:
    """The documentation table of settings (docs/settings.md is generated from this)."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = s.default if s.default is not None else ("computed" if s.dynamic_default else "unset (off)")
        rows.append(f"| `{s.name}` | `{default}` | {s.description} |")
    return "\n".join(rows)
