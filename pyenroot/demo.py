"""`make demo`: from nothing to a command running in a container, on this machine alone.

Starts a registry on loopback, builds a small busybox image on the spot and pushes it, then, as an
unprivileged user, imports the image, creates a container and runs a command in it. With a Slurm build
installed, it then brings a local two-node cluster up and runs the same image through `srun`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pyenroot.devtools import account, imagebuilder, rootfs
from pyenroot.devtools.registry import LocalRegistry

DEMO_USER = "pyenroot-demo"
IMAGE_REPOSITORY = "demo/busybox"
IMAGE_TAG = "latest"


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _pyenroot_command() -> str:
    found = shutil.which("pyenroot")
    return found or f"{sys.executable} -m pyenroot"


def run_as(user, command: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> str:
    """Run a command as the demo user with a login-like environment; fail loudly with its output."""
    full_env = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name, "LANG": "C.UTF-8",
                "PATH": "/usr/local/bin:/usr/bin:/bin", **(env or {})}
    result = subprocess.run(command, env=full_env, cwd=cwd or user.pw_dir, user=user.pw_uid, group=user.pw_gid,
                            extra_groups=[], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"demo: `{' '.join(command)}` failed ({result.returncode}):\n{result.stderr}{result.stdout}")
    return result.stdout


def push_sample_image(registry: LocalRegistry, workdir: Path) -> str:
    """Build the busybox sample image and push it; returns its enroot-style URI."""
    tree = rootfs.busybox_rootfs(workdir / "rootfs")
    image = imagebuilder.build_image([imagebuilder.tar_of_directory(tree)], cmd=["/bin/sh"],
                                     env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
    imagebuilder.Pusher(registry.url).image(IMAGE_REPOSITORY, IMAGE_TAG, image)
    return f"docker://{registry.host}#{IMAGE_REPOSITORY}:{IMAGE_TAG}"


def run_container_demo(user, uri: str) -> None:
    pyenroot = _pyenroot_command().split()
    env = {"ENROOT_ALLOW_HTTP": "y"}
    scratch = Path(tempfile.mkdtemp(prefix="pyenroot-demo-", dir="/tmp"))
    os.chown(scratch, user.pw_uid, user.pw_gid)
    image_file = scratch / "busybox.sqsh"
    _say(f"pyenroot import -o {image_file} {uri}   (as {user.pw_name})")
    run_as(user, [*pyenroot, "import", "-o", str(image_file), uri], env)
    _say("pyenroot create --force --name demo busybox.sqsh")
    run_as(user, [*pyenroot, "create", "--force", "--name", "demo", str(image_file)], env)
    _say("pyenroot start demo cat /etc/os-release")
    print(run_as(user, [*pyenroot, "start", "demo", "cat", "/etc/os-release"], env), end="", flush=True)
    _say("pyenroot start demo sh -c 'echo hello from uid $(id -u) inside'")
    print(run_as(user, [*pyenroot, "start", "demo", "sh", "-c", "echo hello from uid $(id -u) inside"], env),
          end="", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyenroot.demo", description=__doc__)
    parser.add_argument("--no-slurm", action="store_true", help="skip the Slurm part")
    parser.add_argument("--workdir", default="/tmp/pyenroot-demo", help="registry storage and scratch space")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (it starts a registry and creates the unprivileged user "
                         f"{DEMO_USER})")
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    user = account.ensure_user(DEMO_USER)
    _say("starting a registry on loopback")
    registry = LocalRegistry(workdir / "registry").start()
    try:
        uri = push_sample_image(registry, workdir)
        _say(f"pushed the sample image {uri}")
        run_container_demo(user, uri)
        if not args.no_slurm:
            _slurm_part(registry, user)
    finally:
        registry.stop()
    _say("demo finished")
    return 0


def _slurm_part(registry: LocalRegistry, user) -> None:
    try:
        from pyenroot.slurm.demo import run_slurm_demo
    except ImportError:
        _say("Slurm part not available in this build")
        return
    image = f"{registry.host}#{IMAGE_REPOSITORY}:{IMAGE_TAG}"
    run_slurm_demo(image=image, user=user)


if __name__ == "__main__":
    sys.exit(main())
