"""`pyenroot-cluster up|down|status`: a real Slurm cluster on this machine, for development, tests and demos.

As root and without systemd: a munge key and munged, slurmctld and N slurmd (each in its own UTS and mount
namespace, with its own hostname, a node-local runtime directory and its own /tmp and /run) on loopback, all
state under one directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyenroot.errors import PyenrootError, UsageError

DEFAULT_DIR = Path("/tmp/pyenroot-cluster")
# The templates: in the source tree, or where the package installs them (pyproject data-files).
TEMPLATE_DIRS = (Path(__file__).resolve().parents[2] / "slurm_conf", Path(sys.prefix) / "share/pyenroot/slurm_conf")
CONTROLLER_PORT = 6817
FIRST_NODE_PORT = 17001
PLUGIN_DIRS = (Path("/usr/lib/x86_64-linux-gnu/slurm-wlm"), Path("/usr/lib/aarch64-linux-gnu/slurm-wlm"),
               Path("/usr/lib64/slurm"), Path("/usr/lib/slurm"))
PLUGIN_NAME = "spank_pyenroot.so"


class ClusterError(PyenrootError):
    reference = "cluster"


@dataclass(frozen=True)
class Node:
    name: str
    port: int


@dataclass
class ClusterSpec:
    """What to render: where everything lives, how many nodes, and which SPANK plugin with which arguments."""

    directory: Path = DEFAULT_DIR
    node_count: int = 2
    cpus: int = 8
    plugin: Path | None = None
    plugin_args: dict[str, str] = field(default_factory=dict)
    debug_level: str = "info"
    controller_port: int = CONTROLLER_PORT
    first_node_port: int = FIRST_NODE_PORT
    # Each node gets its own /tmp and /run, as real nodes have (Slurm's PMIx plugin makes per-step directories
    # in TmpFS=/tmp that two nodes on one host would share). These directories of the host's /tmp stay
    # visible on every node (the cluster directory always does): a test's files, a user's work directory.
    private_tmp: bool = True
    shared_tmp_paths: tuple[Path, ...] = ()

    @property
    def nodes(self) -> list[Node]:
        return [Node(f"node{i}", self.first_node_port + i - 1) for i in range(1, self.node_count + 1)]

    @property
    def shared_directories(self) -> list[str]:
        """Directories every node sees as the same files, where caches live here: the cluster directory and the
        kept /tmp paths (homes are there) with private_tmp, else everything."""
        if not self.private_tmp:
            return ["/"]
        return [str(p) for p in (self.directory, *self.shared_tmp_paths)]

    @property
    def slurm_conf(self) -> Path:
        return self.directory / "etc" / "slurm.conf"

    @property
    def node_runtime(self) -> Path:
        """Mount point of each node's private tmpfs (the plugin's runtime_path)."""
        return self.directory / "noderun"


def templates_dir() -> Path:
    override = os.environ.get("PYENROOT_SLURM_TEMPLATES")
    for candidate in ([Path(override)] if override else []) + list(TEMPLATE_DIRS):
        if (candidate / "slurm.conf.j2").is_file():
            return candidate
    raise ClusterError("the slurm.conf templates are not installed",
                       hint="set PYENROOT_SLURM_TEMPLATES to the source tree's slurm_conf directory")


def render(spec: ClusterSpec, templates: Path | None = None) -> dict[str, str]:
    """The configuration files, relative path -> text (pure apart from reading the templates)."""
    import jinja2

    templates = templates or templates_dir()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    args = dict(spec.plugin_args)
    args.setdefault("runtime_path", str(spec.node_runtime))
    # What the simulated nodes really share (their filesystems are all the host's local ones): the fan-out's
    # `auto` rule broadcasts images only for caches elsewhere (a node's own /tmp).
    args.setdefault("fanout_shared", ":".join(spec.shared_directories))
    values = {
        "cluster_name": "pyenroot", "cluster_dir": str(spec.directory), "controller_port": spec.controller_port,
        "nodes": spec.nodes, "cpus": spec.cpus, "debug_level": spec.debug_level, "slurm_version": "22.05",
        "plugin": str(spec.plugin) if spec.plugin else "", "plugin_args": args,
    }
    names = ("slurm.conf", "plugstack.conf", "plugstack.conf.d/pyenroot.conf")
    return {name: env.get_template(name + ".j2").render(**values) for name in names}


def write_config(spec: ClusterSpec, templates: Path | None = None) -> None:
    for name, text in render(spec, templates).items():
        target = spec.directory / "etc" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, target)


# ---------------------------------------------------------------------------------------------------- processes

def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def _pid_files(spec: ClusterSpec) -> list[tuple[str, Path]]:
    run = spec.directory / "run"
    files = [(f"slurmd {n.name}", run / f"slurmd-{n.name}.pid") for n in spec.nodes]
    return [*files, ("slurmctld", run / "slurmctld.pid"), ("munged", spec.directory / "munge" / "munged.pid")]


def _run(argv: Sequence[str], what: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise ClusterError(f"{what} failed (exit code {done.returncode}): {(done.stderr or done.stdout).strip()}")


def _prepare_dirs(spec: ClusterSpec) -> None:
    for sub in ("munge", "state", "log", "run", "etc", *(f"spool/{n.name}" for n in spec.nodes)):
        (spec.directory / sub).mkdir(parents=True, exist_ok=True)
    spec.directory.chmod(0o755)
    (spec.directory / "etc").chmod(0o755)
    (spec.directory / "munge").chmod(0o755)  # clients need o+x on the socket directory
    spec.node_runtime.mkdir(exist_ok=True)
    spec.node_runtime.chmod(0o755)


def _start_munge(spec: ClusterSpec) -> None:
    munge = spec.directory / "munge"
    if _pid_alive(munge / "munged.pid"):
        return
    key = munge / "munge.key"
    if not key.exists():
        _run(["mungekey", "--create", f"--keyfile={key}"], "mungekey")
    key.chmod(0o600)
    os.chown(key, 0, 0)
    _run(["munged", f"--key-file={key}", f"--socket={munge / 'munge.sock'}", f"--pid-file={munge / 'munged.pid'}",
          f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}", "--force"], "munged")


def _start_controller(spec: ClusterSpec) -> None:
    if _pid_alive(spec.directory / "run" / "slurmctld.pid"):
        return
    # -i: ignore state saved by an earlier run with other nodes; the cluster is disposable.
    _run(["slurmctld", "-i", "-f", str(spec.slurm_conf)], "slurmctld")


HOST_TMP_VIEW = "/run/pyenroot-host-tmp"  # where a node sees the host's /tmp while it builds its own


def _kept_under_tmp(spec: ClusterSpec) -> list[str]:
    """The host /tmp paths a node keeps seeing, relative to /tmp, outermost first (inner ones are inside)."""
    kept: list[str] = []
    for path in sorted({spec.directory, *spec.shared_tmp_paths}, key=lambda p: len(p.parts)):
        inside_tmp = path.is_relative_to("/tmp") and path != Path("/tmp")
        if inside_tmp and not any(path.is_relative_to(Path("/tmp") / outer) for outer in kept):
            kept.append(str(path.relative_to("/tmp")))
    return kept


def _private_tmp_script(spec: ClusterSpec) -> str:
    """Shell lines (run in the node's mount namespace) giving it a fresh /run and /tmp; the kept paths of the
    host's /tmp are bound back at their places. Only names from the spec appear, each quoted."""
    import shlex

    view = HOST_TMP_VIEW
    lines = ["mount -t tmpfs -o mode=755,size=64m pyenroot-run /run", f"mkdir -p {view}",
             f"mount --rbind /tmp {view}", "mount -t tmpfs -o mode=1777,size=1g pyenroot-tmp /tmp"]
    for relative in _kept_under_tmp(spec):
        inside = shlex.quote(f"/tmp/{relative}")
        lines += [f"mkdir -p {inside}", f"mount --rbind {shlex.quote(f'{view}/{relative}')} {inside}"]
    lines.append(f"umount -l {view}")
    return " && ".join(lines)


def _node_command(spec: ClusterSpec, node: Node) -> list[str]:
    """slurmd in a private UTS + mount namespace: own hostname, own tmpfs for the node-local runtime directory
    (and with private_tmp its own /tmp and /run)."""
    private = f"{_private_tmp_script(spec)} && " if spec.private_tmp else ""
    script = (f'hostname {node.name} && {private}mount -t tmpfs -o mode=755,size=1g pyenroot-{node.name} "$1" && '
              f'exec slurmd -f "$2" -N {node.name}')
    return ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(spec.node_runtime), str(spec.slurm_conf)]


def _start_nodes(spec: ClusterSpec) -> None:
    for node in spec.nodes:
        if _pid_alive(spec.directory / "run" / f"slurmd-{node.name}.pid"):
            continue
        _run(_node_command(spec, node), f"slurmd {node.name}")


def is_running(spec: ClusterSpec) -> bool:
    return _pid_alive(spec.directory / "run" / "slurmctld.pid") is not None


def client_env(spec: ClusterSpec) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(spec.slurm_conf)}


def wait_idle(spec: ClusterSpec, timeout: float = 60) -> None:
    """Poll sinfo until every node is idle (resuming nodes left down or drained by an earlier run)."""
    from pyenroot.slurm.cluster import ClusterState

    state = ClusterState(spec.slurm_conf)
    deadline = time.monotonic() + timeout
    resumed = False
    while True:
        nodes = state.nodes()
        states = {n.name: n.state for n in nodes}
        if len(states) == spec.node_count and all(s == "idle" for s in states.values()):
            return
        stuck = [name for name, s in states.items() if s in ("down", "drained", "draining", "drain")]
        if stuck and not resumed:
            subprocess.run(["scontrol", "update", f"nodename={','.join(stuck)}", "state=resume"],
                           env=client_env(spec), capture_output=True)
            resumed = True
        if time.monotonic() > deadline:
            raise ClusterError(f"nodes did not become idle within {timeout:.0f} s: {states}",
                               hint=f"see the logs in {spec.directory / 'log'}")
        time.sleep(0.2)


def _port_busy(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as slurmctld does: TIME_WAIT is fine
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _check_ports(spec: ClusterSpec) -> None:
    """A port taken by another cluster would make our clients talk to it: refuse early and say so."""
    if _pid_alive(spec.directory / "run" / "slurmctld.pid"):
        return
    for port in (spec.controller_port, *(n.port for n in spec.nodes)):
        if _port_busy(port):
            raise ClusterError(f"port {port} is in use (another Slurm cluster?)",
                               hint="stop it ('pyenroot-cluster down -d DIR') or choose other ports")


def up(spec: ClusterSpec) -> None:
    """Start whatever is not running yet; idempotent. Rewrites the configuration first."""
    if os.geteuid() != 0:
        raise ClusterError("the local cluster must be started as root", hint="run it with sudo")
    for tool in ("munged", "slurmctld", "slurmd", "sinfo", "unshare"):
        if not shutil.which(tool):
            raise ClusterError(f"{tool} is not installed", hint="run 'make deps' (Debian packages slurmd, munge)")
    _check_ports(spec)
    _prepare_dirs(spec)
    write_config(spec)
    try:
        _start_munge(spec)
        _start_controller(spec)
        _start_nodes(spec)
        wait_idle(spec)
    except BaseException:
        down(spec)  # a half-started cluster is of no use and would hold the ports
        raise


def down(spec: ClusterSpec, timeout: float = 10) -> None:
    """SIGTERM every daemon by its pid file, then SIGKILL what is left after `timeout`."""
    pids = [pid for _, f in _pid_files(spec) if (pid := _pid_alive(f))]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.05)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def status(spec: ClusterSpec) -> list[str]:
    lines = []
    for what, pid_file in _pid_files(spec):
        pid = _pid_alive(pid_file)
        lines.append(f"{what}: {f'running (pid {pid})' if pid else 'stopped'}")
    if _pid_alive(spec.directory / "run" / "slurmctld.pid"):
        from pyenroot.slurm.cluster import ClusterState

        for node in ClusterState(spec.slurm_conf).nodes():
            lines.append(f"node {node.name}: {node.state}")
    return lines


# ---------------------------------------------------------------------------------------------------- CLI

def default_plugin() -> Path | None:
    for directory in PLUGIN_DIRS:
        if (directory / PLUGIN_NAME).exists():
            return directory / PLUGIN_NAME
    return None


def _parse_plugin_args(items: Sequence[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"plugin argument must be KEY=VALUE: {item!r}")
        args[key] = value
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyenroot-cluster", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("-d", "--dir", type=Path,
                        default=Path(os.environ.get("PYENROOT_CLUSTER_DIR") or DEFAULT_DIR),
                        help="directory of configuration, state, spool and logs (default %(default)s, "
                             "or $PYENROOT_CLUSTER_DIR)")
    parser.add_argument("-n", "--nodes", type=int, default=2, help="number of slurmd nodes (default 2)")
    parser.add_argument("--cpus", type=int, default=8, help="CPUs each node declares (default 8)")
    parser.add_argument("--port", type=int, default=CONTROLLER_PORT,
                        help="slurmctld port; the nodes use the ports after it (default %(default)s, 17001...)")
    parser.add_argument("--plugin", type=Path, help=f"SPANK plugin to load (default: installed {PLUGIN_NAME})")
    parser.add_argument("--no-plugin", action="store_true", help="load no SPANK plugin")
    parser.add_argument("--plugin-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="plugstack argument of the plugin, e.g. pyenroot=/path/to/pyenroot (repeatable)")
    parser.add_argument("--share-tmp", action="append", default=[], type=Path, metavar="PATH",
                        help="a directory under the host's /tmp that jobs must see (each node has its own /tmp; "
                             "the cluster directory is always shared; repeatable)")
    parser.add_argument("--shared-tmp", action="store_true",
                        help="let every node use the host's /tmp and /run (PMIx steps across nodes then fail)")
    return parser


def spec_from_args(args: argparse.Namespace) -> ClusterSpec:
    plugin = None if args.no_plugin else (args.plugin or default_plugin())
    plugin_args = _parse_plugin_args(args.plugin_arg)
    if plugin and "pyenroot" not in plugin_args and shutil.which("pyenroot"):
        plugin_args["pyenroot"] = str(shutil.which("pyenroot"))
    first_node_port = FIRST_NODE_PORT if args.port == CONTROLLER_PORT else args.port + 1
    return ClusterSpec(directory=args.dir.resolve(), node_count=args.nodes, cpus=args.cpus, plugin=plugin,
                       plugin_args=plugin_args, controller_port=args.port, first_node_port=first_node_port,
                       private_tmp=not args.shared_tmp,
                       shared_tmp_paths=tuple(path.resolve() for path in args.share_tmp))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = spec_from_args(args)
        if args.action == "up":
            up(spec)
            print(f"cluster up: export SLURM_CONF={spec.slurm_conf}")
        elif args.action == "down":
            down(spec)
            print("cluster down")
        else:
            print("\n".join(status(spec)))
    except PyenrootError as error:
        print(f"pyenroot-cluster: error: {error.message} ({error.reference})", file=sys.stderr)
        if error.hint:
            print(f"hint: {error.hint}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
