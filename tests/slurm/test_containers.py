"""Named and unnamed containers, attaching, saving, squashfs images, cleanup
(pyxis tests/name.bats, exec.bats, squashfs_image.bats)."""

import os
import time


def containers(slurm) -> list[str]:
    done = slurm.pyenroot("list")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def wait_for(predicate, what: str, limit: float = 60) -> None:
    """Poll (no timing assertion: the limit only stops a hung test)."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def test_unnamed_container_is_removed(slurm, busybox_uri):
    done = slurm.srun(f"--container-image={busybox_uri}", "--container-writable", "touch", "/marker")
    assert done.returncode == 0, done.stderr
    assert not [c for c in containers(slurm) if c.startswith("pyxis_")]


def test_named_container_keeps_changes(slurm, busybox_uri):
    image = f"--container-image={busybox_uri}"
    done = slurm.srun(image, "--container-name=keep", "--container-writable", "sh", "-c", "echo kept > /state")
    assert done.returncode == 0, done.stderr
    assert "pyxis_keep" in containers(slurm)
    done = slurm.srun("--container-name=keep", "cat", "/state")
    assert (done.returncode, done.stdout) == (0, "kept\n"), done.stderr
    assert "reusing existing container filesystem" in done.stderr
    other = slurm.srun(image, "--container-name=other", "cat", "/state")
    assert other.returncode != 0
    done = slurm.srun(image, "--container-name=keep:create", "true")
    assert done.returncode != 0
    assert '"create" flag was passed to --container-name but the container already exists' in done.stderr
    assert slurm.pyenroot("remove", "-f", "pyxis_keep").returncode == 0
    done = slurm.srun("--container-name=keep", "true")
    assert done.returncode != 0
    done = slurm.srun(image, "--container-name=keep", "sh", "-c", "test ! -e /state && echo fresh")
    assert (done.returncode, done.stdout) == (0, "fresh\n"), done.stderr


def test_attach_to_running_container(slurm, busybox_uri):
    image = f"--container-image={busybox_uri}"
    done = slurm.srun(image, "--container-name=busy:exec", "true")
    assert done.returncode != 0
    marker = slurm.user.home / "started"
    # Both steps on one node: a running container can only be joined on its own node.
    on_node1 = ("-w", "node1")
    first = slurm.popen(*on_node1, image, "--container-name=busy",
                        f"--container-mounts=tmpfs:/scratch,{slurm.user.home}", "sh", "-c",
                        f"echo inside > /scratch/f; touch {marker}; cd /var; sleep 30")
    try:
        wait_for(marker.exists, "the first step")
        done = slurm.srun(*on_node1, "--container-name=busy", "--container-mounts=/tmp:/tmp2", "sh", "-c",
                          "cat /scratch/f; pwd")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "inside\n/\n"
        assert "reusing existing container namespaces" in done.stderr
        assert "ignoring --container-mounts when attaching to a running container" in done.stderr
        done = slurm.srun(*on_node1, "--container-name=busy:exec", "cat", "/scratch/f")
        assert (done.returncode, done.stdout) == (0, "inside\n"), done.stderr
        done = slurm.srun(*on_node1, "--container-name=busy:no_exec", "sh", "-c",
                          "cat /scratch/f 2>/dev/null || echo fresh")
        assert done.stdout == "fresh\n", done.stderr
    finally:
        first.kill()
        first.communicate()


def test_scancel_leaves_no_unnamed_container(slurm, busybox_uri, plugin_args):
    plugin_args(use_squashfuse="0")  # the unnamed container is then a directory that must be removed
    marker = slurm.user.home / "running"
    step = slurm.popen(f"--container-image={busybox_uri}", "--job-name=to-cancel",
                       f"--container-mounts={slurm.user.home}", "sh", "-c",
                       f"touch {marker}; sleep 60")
    try:
        wait_for(marker.exists, "the step")
        assert [c for c in containers(slurm) if c.startswith("pyxis_")]
        slurm.user.run(["scancel", "--name=to-cancel"], env=slurm.env())
        step.communicate(timeout=120)
    finally:
        step.kill()
    wait_for(lambda: not [c for c in containers(slurm) if c.startswith("pyxis_")], "the cleanup")


def test_squashfs_image_and_save(slurm, busybox_uri, busybox_sqsh):
    work = slurm.user.make_dir("work")
    local = work / "busybox.sqsh"
    local.write_bytes(busybox_sqsh.read_bytes())
    slurm.user.give(local)
    done = slurm.srun("--container-image=./work/busybox.sqsh", "sh", "-c", "ls /bin/busybox; pwd")
    assert (done.returncode, done.stdout) == (0, "/bin/busybox\n/\n"), done.stderr
    done = slurm.srun("-n4", "--container-image=./work/busybox.sqsh", "--container-workdir=/tmp", "pwd")
    assert (done.returncode, done.stdout) == (0, "/tmp\n" * 4), done.stderr
    for n in (1, 2):  # saving onto the image in use accumulates changes
        done = slurm.srun("--container-image=./work/busybox.sqsh", "--container-save=./work/busybox.sqsh",
                          "--container-writable", "sh", "-c", f"echo {n} >> /counter")
        assert done.returncode == 0, done.stderr
        assert "exported container" in done.stderr
    done = slurm.srun(f"--container-image={local}", "cat", "/counter")
    assert (done.returncode, done.stdout) == (0, "1\n2\n"), done.stderr
    done = slurm.srun(f"--container-image={busybox_uri}", f"--container-save={work}/saved.sqsh", "true")
    assert done.returncode == 0, done.stderr
    done = slurm.srun(f"--container-image={work}/saved.sqsh", "cat", "/etc/pyenroot-test")
    assert (done.returncode, done.stdout) == (0, "second layer\n"), done.stderr
    assert not [c for c in containers(slurm) if c.startswith("pyxis_")]
    done = slurm.srun("--container-image=./nonexistent.sqsh", "true")
    assert done.returncode != 0


def test_job_scope_names_and_epilog(job_scope_cluster, user, busybox_uri):
    """container_scope=job: names carry the job id, and the job epilog removes them on every node."""
    from tests.slurm.conftest import Slurm

    slurm = Slurm(job_scope_cluster, user)
    script = (f"#!/bin/sh\n#SBATCH -N2\nsrun -N2 --container-image={busybox_uri} --container-name=jobbound true\n"
              "pyenroot list\n")
    done, log = slurm.sbatch(script)
    assert done.returncode == 0, done.stderr + log
    job = done.stdout.split()[-1]
    assert f"pyxis_{job}_jobbound" in log.split()
    wait_for(lambda: not [c for c in containers(slurm) if c.startswith("pyxis_")], "the job epilog")


def _helpers_of(directory) -> list[int]:
    """PIDs of processes whose command line mentions `directory` (e.g. squashfuse serving a step's image)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if str(directory).encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_no_process_outlives_the_step(slurm, busybox_uri, busybox_sqsh):
    """The anchor and the FUSE server of a directly started image end with the step (signals reset)."""
    for image in (busybox_uri, str(busybox_sqsh)):
        done = slurm.srun(f"--container-image={image}", "true")
        assert done.returncode == 0, done.stderr
    wait_for(lambda: not _helpers_of(slurm.spec.node_runtime) and not _helpers_of(busybox_sqsh),
             "the step's helper processes to exit")


def test_overlap_step_joins_container_in_allocation(slurm, busybox_uri):
    """pyxis's usual pattern: inside one allocation, `srun --overlap --container-name` joins a running step."""
    marker, stop = slurm.user.home / "first-running", slurm.user.home / "stop"
    script = (
        f"srun --container-image={busybox_uri} --container-name=ov --container-mounts=tmpfs:/t,{slurm.user.home} "
        f"sh -c 'echo shared > /t/f; touch {marker}; while [ ! -e {stop} ]; do sleep 0.1; done' &\n"
        f"n=0; while [ ! -e {marker} ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n+1)); done\n"
        "srun --overlap --container-name=ov cat /t/f\n"
        f"touch {stop}; wait\n")
    done = slurm.user.run(["salloc", "-N1", "sh", "-c", script], env=slurm.env(), timeout=300)
    assert "shared\n" in done.stdout, done.stderr
    assert "reusing existing container namespaces" in done.stderr
