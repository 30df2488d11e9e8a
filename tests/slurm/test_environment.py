"""Task environment, options from PYXIS_CONTAINER_* variables, working directory, read-only root
(pyxis tests/env.bats, env_vars.bats, workdir.bats, writable.bats, remap_root.bats, entrypoint.bats)."""

import pytest

from pyenroot.devtools import imagebuilder


def test_host_variables_and_image_precedence(slurm, busybox_uri):
    env = {"FOO": "bar", "TERM": "dumb", "IMAGE_VAR": "host", "LANG": "C.UTF-8"}
    done = slurm.srun(f"--container-image={busybox_uri}", "sh", "-c",
                      "echo FOO=$FOO TERM=$TERM IMAGE_VAR=$IMAGE_VAR LANG=${LANG-unset}", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "FOO=bar TERM=dumb IMAGE_VAR=busybox LANG=unset\n"


def test_container_env_keeps_host_values(slurm, busybox_uri):
    env = {"IMAGE_VAR": "host", "LANG": "C.UTF-8"}
    done = slurm.srun(f"--container-image={busybox_uri}", "--container-env=IMAGE_VAR,LANG,UNSET_ONE", "sh", "-c",
                      "echo IMAGE_VAR=$IMAGE_VAR LANG=$LANG", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "IMAGE_VAR=host LANG=C.UTF-8\n"


def test_image_from_environment(slurm, busybox_uri):
    for variable in ("PYXIS_CONTAINER_IMAGE", "PYENROOT_CONTAINER_IMAGE"):
        done = slurm.srun("cat", "/etc/pyenroot-test", env={variable: busybox_uri})
        assert done.returncode == 0, done.stderr
        assert done.stdout == "second layer\n"


def test_environment_options_lose_to_the_command_line(slurm, busybox_uri):
    env = {"PYXIS_CONTAINER_IMAGE": busybox_uri, "PYXIS_CONTAINER_WORKDIR": "/etc",
           "PYXIS_CONTAINER_MOUNTS": f"{slurm.user.home}:/envmount", "PYXIS_CONTAINER_READONLY": "1"}
    done = slurm.srun("sh", "-c", "pwd; ls -d /envmount; touch / 2>&1", env=env)
    assert "/etc\n/envmount\n" in done.stdout
    assert "Read-only file system" in done.stdout
    done = slurm.srun("--container-workdir=/usr", f"--container-mounts={slurm.user.home}:/climount",
                      "--container-writable", "sh", "-c", "pwd; ls -d /climount /envmount; touch /x && echo w",
                      env=env)
    assert done.stdout.startswith("/usr\n/climount\n")
    assert "/envmount" not in done.stdout.replace("ls: /envmount", "")
    assert done.stdout.endswith("w\n")


def test_workdir(slurm, busybox_uri):
    done = slurm.srun(f"--container-image={busybox_uri}", "--container-workdir=/usr/bin", "pwd")
    assert (done.returncode, done.stdout) == (0, "/usr/bin\n"), done.stderr
    done = slurm.srun(f"--container-image={busybox_uri}", "--container-workdir=../", "pwd")
    assert (done.returncode, done.stdout) == (0, "/\n"), done.stderr
    done = slurm.srun(f"--container-image={busybox_uri}", "--container-workdir=/pyxis", "pwd")
    assert done.returncode != 0
    assert "/pyxis: No such file or directory" in done.stderr


def test_readonly_and_writable(slurm, busybox_uri):
    done = slurm.srun(f"--container-image={busybox_uri}", "--container-readonly", "touch", "/file")
    assert done.returncode != 0
    assert "Read-only file system" in done.stderr
    done = slurm.srun(f"--container-image={busybox_uri}", "--container-writable", "touch", "/file")
    assert done.returncode == 0, done.stderr


def test_remap_root_and_seccomp(slurm, busybox_uri):
    uid = slurm.user.uid
    script = ("id -u; cat /proc/self/uid_map; grep '^Seccomp:' /proc/self/status; "
              "chown 123 /etc/pyenroot-test && echo chown-ok")
    done = slurm.srun(f"--container-image={busybox_uri}", "--container-remap-root", "--container-writable",
                      "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(uid), "1"]
    assert lines[2].split() == ["Seccomp:", "2"]
    assert lines[3] == "chown-ok"
    done = slurm.srun(f"--container-image={busybox_uri}", "--no-container-remap-root", "sh", "-c", script)
    lines = done.stdout.split("\n")
    assert lines[0] == str(uid)
    # A squashfs started in place maps through a nested namespace: `UID 0 1` here, pyxis shows `UID UID 1`.
    assert lines[1].split()[0::2] == [str(uid), "1"]
    assert lines[2].split() == ["Seccomp:", "2"]


@pytest.fixture(scope="module")
def entrypoint_uri(pusher, busybox_rootfs_dir, registry) -> str:
    """busybox with an entrypoint that announces itself and exports ENTRY=1, and WORKDIR /opt."""
    entry = b'#!/bin/sh\necho entrypoint-ran\nexport ENTRY=1\nexec "$@"\n'
    extra = imagebuilder.tar_bytes([imagebuilder.Entry("entry.sh", data=entry, mode=0o755),
                                    imagebuilder.Entry("opt", "dir")])
    image = imagebuilder.build_image([imagebuilder.tar_of_directory(busybox_rootfs_dir), extra],
                                     entrypoint=["/entry.sh"], workdir="/opt",
                                     env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
    pusher.image("test/entrypoint", "latest", image)
    return f"{registry.host}#test/entrypoint:latest"


def test_entrypoint_and_image_workdir(slurm, entrypoint_uri):
    image = f"--container-image={entrypoint_uri}"
    done = slurm.srun(image, "sh", "-c", "echo ENTRY=${ENTRY-unset} $(pwd)")
    assert (done.returncode, done.stdout) == (0, "ENTRY=unset /opt\n"), done.stderr
    done = slurm.srun(image, "--container-entrypoint", "sh", "-c", "echo ENTRY=${ENTRY-unset}")
    assert (done.returncode, done.stdout) == (0, "ENTRY=1\n"), done.stderr
    assert "entrypoint-ran" not in done.stderr
    done = slurm.srun(image, "--container-entrypoint", "--container-entrypoint-log", "true")
    assert done.returncode == 0, done.stderr
    assert "entrypoint-ran" in done.stderr
