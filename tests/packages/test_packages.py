"""The Debian packages as an admin installs them: the packaged CLI imports and starts the demo's busybox
image, srun starts a container through the packaged plugin, and the man pages and completion are in place."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.packages.conftest import PACKAGED_CLI


def test_packaged_cli_is_the_system_python_one(installed, user):
    done = user.run([str(PACKAGED_CLI), "version"])
    assert done.returncode == 0, done.stderr
    where = user.run(["/usr/bin/python3", "-c", "import pyenroot; print(pyenroot.__file__)"])
    assert where.stdout.startswith("/usr/lib/python3/dist-packages/pyenroot/"), where.stdout


def test_packaged_import_and_start(installed, user, busybox_image):
    image = user.home / "busybox.sqsh"
    env = {"ENROOT_ALLOW_HTTP": "y"}
    done = user.run([str(PACKAGED_CLI), "import", "-o", str(image), busybox_image.uri], env=env)
    assert done.returncode == 0, done.stderr
    done = user.run([str(PACKAGED_CLI), "create", "-n", "demo", str(image)], env=env)
    assert done.returncode == 0, done.stderr
    done = user.run([str(PACKAGED_CLI), "start", "demo", "cat", "/etc/pyenroot-test"], env=env)
    assert (done.returncode, done.stdout) == (0, "second layer\n"), done.stderr
    done = user.run([str(PACKAGED_CLI), "start", str(image), "sh", "-c", "echo $IMAGE_VAR"], env=env)
    assert (done.returncode, done.stdout) == (0, "busybox\n"), done.stderr


def test_srun_through_the_packaged_plugin(packaged_slurm, busybox_image):
    uri = busybox_image.srun_image
    done = packaged_slurm.srun("-N2", f"--container-image={uri}", "cat", "/etc/pyenroot-test")
    assert (done.returncode, done.stdout) == (0, "second layer\n" * 2), done.stderr


def test_man_pages_and_completion_are_installed(installed):
    # The package's own pages (`make install` may also have put copies under /usr/local, which man finds first).
    listed = subprocess.run(["dpkg", "-L", "pyenroot"], capture_output=True, text=True, check=True).stdout.split()
    for page in ("pyenroot", "pyenroot-import", "pyenroot-start"):
        packaged = f"/usr/share/man/man1/{page}.1.gz"
        assert packaged in listed, listed
        shown = subprocess.run(["man", "-P", "cat", "-l", packaged], capture_output=True, text=True)
        assert shown.returncode == 0 and "pyenroot" in shown.stdout, shown.stderr
        where = subprocess.run(["man", "-w", page], capture_output=True, text=True)
        assert where.returncode == 0, f"man -w {page}: {where.stderr}"
    assert "/usr/share/bash-completion/completions/pyenroot" in listed


def test_plugstack_snippet_is_installed_disabled(installed, packaged_plugin):
    snippet = Path("/etc/slurm/plugstack.conf.d/pyenroot.conf")
    lines = [line.strip() for line in snippet.read_text().splitlines()]
    assert f"#required {packaged_plugin}" in lines
    assert not [line for line in lines if line and not line.startswith("#")]


def test_doctor_on_every_node_and_its_summary(packaged_slurm):
    """The admin guide's one-liner: every node's --json report through srun, then --summary."""
    done = packaged_slurm.srun("-l", "-N2", "--ntasks-per-node=1", str(PACKAGED_CLI), "doctor", "--json")
    assert done.returncode == 0, done.stderr
    summary = packaged_slurm.user.run([str(PACKAGED_CLI), "doctor", "--summary"], input=done.stdout)
    assert summary.returncode == 0, summary.stderr
    assert [line.split()[0] for line in summary.stdout.splitlines()[1:3]] == ["node1", "node2"]
    assert summary.stdout.splitlines()[-1] == "2 node(s): 2 can start containers, 0 cannot"
