"""Bad input fails the step with pyxis's message (pyxis tests/invalid_args.bats)."""

import pytest

LONG = "x" * 300


@pytest.mark.parametrize(("args", "message"), [
    (["--container-image="], "--container-image: argument required"),
    (["--container-image=./"], "failed to create container filesystem"),
    (["--container-image=/dev/urandom"], "failed to create container filesystem"),
    (["--container-name=absent"], 'a container with name "pyxis_absent" does not exist'),
    (["--container-name=:attach"], "empty name"),
    (["--container-name=x:attach"], 'flag must be "auto", "create", "exec" or "no_exec"'),
    (["--container-mounts="], "--container-mounts: argument required"),
    (["--container-mounts=:"], "--container-mounts: invalid format"),
    (["--container-mounts=/tmp:"], "--container-mounts: invalid format"),
    (["--container-mounts=devpts:/dev/pts"], "mount source must be a relative path"),
    (["--container-mounts=/tmp:mnt"], "mount target must be a relative path or an absolute path"),
    (["--container-workdir="], "--container-workdir: argument required"),
    (["--container-readonly", "--container-writable"],
     "both --container-writable and --container-readonly were specified"),
    (["--container-mount-home", "--no-container-mount-home"],
     "both --container-mount-home and --no-container-mount-home were specified"),
    (["--container-env="], "--container-env: argument required"),
    (["--container-env=FOO,"], "--container-env: invalid format"),
    (["--container-save=/tmp/"], "target is a directory"),
    (["--container-save=/"], "target is a directory"),
    (["--container-save=./"], "target is a directory"),
    (["--container-unshare=foo"], "unknown namespace 'foo'"),
    (["--container-unshare=net,foo"], "unknown namespace 'foo'"),
    (["--container-unshare=net,"], "empty namespace argument"),
])
def test_invalid_argument(slurm, busybox_uri, args, message):
    image = [] if any(a.startswith(("--container-image", "--container-name")) for a in args) else [
        f"--container-image={busybox_uri}"]
    done = slurm.srun(*image, *args, "true")
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.parametrize("name", ["/tmp/foo", LONG])
def test_invalid_container_names(slurm, busybox_uri, name):
    done = slurm.srun(f"--container-image={busybox_uri}", f"--container-name={name}", "true")
    assert done.returncode != 0


def test_random_image_name_fails(slurm):
    done = slurm.srun("--container-image=" + "a" * 2048, "true")
    assert done.returncode != 0


def test_options_without_image_are_ignored_with_a_warning(slurm):
    done = slurm.srun("--container-mounts=/tmp", "--container-workdir=/tmp", "true")
    assert done.returncode == 0
    assert "ignoring --container-mounts because neither --container-image nor --container-name is set" in done.stderr
    assert "ignoring --container-workdir" in done.stderr


def test_bad_image_is_reported_once(slurm):
    done = slurm.srun("--ntasks=2", "--container-image=127.0.0.1:1#thisimagedoesntexist", "true")
    assert done.returncode != 0
    assert done.stderr.count("failed to import docker image: 127.0.0.1:1#thisimagedoesntexist") == 1
