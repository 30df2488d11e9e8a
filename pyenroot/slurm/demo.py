"""The Slurm part of `make demo`: a local two-node cluster and one containerized step, as an unprivileged user.

`run_slurm_demo` brings the cluster up (with the installed SPANK plugin, or one built from spank_plugin/),
runs `srun --container-image=IMAGE cat /etc/os-release` as the user and prints the container's os-release.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from pyenroot.devtools import devcluster
from pyenroot.errors import PyenrootError

SOURCE = Path(__file__).resolve().parents[2] / "spank_plugin"


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _plugin(workdir: Path) -> Path:
    """The installed plugin, else one built from the source tree into `workdir` (readable by everyone)."""
    installed = devcluster.default_plugin()
    if installed is not None:
        return installed
    build = workdir / "spank-build"
    shutil.copytree(SOURCE, build, ignore=shutil.ignore_patterns("*.so"), dirs_exist_ok=True)
    subprocess.run(["make", "-s", "-C", str(build)], check=True)
    for path in (workdir, build, build / "spank_pyenroot.so"):
        path.chmod(0o755)
    return build / "spank_pyenroot.so"


def _pyenroot_cli() -> str:
    found = shutil.which("pyenroot")
    if found is None:
        raise SystemExit("demo: the pyenroot command is not installed (run 'make install')")
    return found


def run_slurm_demo(image: str, user: pwd.struct_passwd, cluster_dir: Path = devcluster.DEFAULT_DIR,
                   keep_cluster: bool = False) -> str:
    """Run IMAGE (`HOST:PORT#repository:tag`) through srun as `user`; returns and prints its os-release."""
    workdir = Path(tempfile.mkdtemp(prefix="pyenroot-slurm-demo-", dir="/tmp"))
    workdir.chmod(0o755)
    # The nodes have their own /tmp: they must still see the plugin built in workdir.
    spec = devcluster.ClusterSpec(directory=cluster_dir, plugin=_plugin(workdir),
                                  plugin_args={"pyenroot": _pyenroot_cli()}, shared_tmp_paths=(workdir,))
    already_running = devcluster.is_running(spec)  # then it is someone's cluster: use it as it is
    if already_running:
        _say(f"using the local Slurm cluster running in {cluster_dir}")
    else:
        _say(f"starting a local Slurm cluster with {spec.node_count} nodes in {cluster_dir}")
    try:
        if not already_running:
            devcluster.up(spec)
    except PyenrootError as error:
        shutil.rmtree(workdir, ignore_errors=True)
        raise SystemExit(f"demo: {error.message}" + (f"\nhint: {error.hint}" if error.hint else "")) from None
    try:
        argv = ["srun", f"--container-image={image}", "cat", "/etc/os-release"]
        _say(f"{' '.join(argv)}   (as {user.pw_name})")
        env = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name, "LANG": "C.UTF-8",
               "PATH": "/usr/local/bin:/usr/bin:/bin", "SLURM_CONF": str(spec.slurm_conf),
               "ENROOT_ALLOW_HTTP": "y"}
        done = subprocess.run(argv, env=env, cwd=user.pw_dir, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"demo: srun failed ({done.returncode}):\n{done.stderr}{done.stdout}")
        print(done.stdout, end="", flush=True)
        return done.stdout
    finally:
        if already_running:
            shutil.rmtree(workdir, ignore_errors=True)
        elif keep_cluster:  # the plugin built in workdir stays, the cluster uses it
            _say(f"the cluster keeps running: export SLURM_CONF={spec.slurm_conf}; stop it with "
                 f"'pyenroot-cluster down -d {cluster_dir}'")
        else:
            devcluster.down(spec)
            shutil.rmtree(workdir, ignore_errors=True)
