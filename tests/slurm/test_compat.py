"""Real-world pyxis scripts that must run unchanged: id maps, shadow entries, the import lines, removed
containers, attaching to unnamed steps; in srun steps, `sbatch` scripts and on two nodes."""

from tests.slurm.test_containers import wait_for

MAPS = "cat /proc/self/uid_map /proc/self/gid_map"


def id_maps(output: str) -> list[list[str]]:
    """The lines of numbers in a step's output (a job log also holds Slurm's and our messages)."""
    return [line.split() for line in output.splitlines() if line.split() and all(
        field.isdigit() for field in line.split())]


def expected_maps(slurm, *, remap_root: bool) -> list[list[str]]:
    uid, gid = str(slurm.user.uid), str(slurm.user.gid)
    return [["0" if remap_root else uid, uid, "1"], ["0" if remap_root else gid, gid, "1"]]


def import_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "docker image" in line]


def test_id_maps_as_enroot_shows_them(slurm, busybox_uri, busybox_sqsh):
    image = f"--container-image={busybox_uri}"
    done = slurm.srun(image, "sh", "-c", MAPS)  # started straight from the squashfs
    assert done.returncode == 0, done.stderr
    assert id_maps(done.stdout) == expected_maps(slurm, remap_root=False)
    done = slurm.srun(image, "--container-remap-root", "sh", "-c", f"{MAPS}; id -u")
    assert done.returncode == 0, done.stderr
    assert id_maps(done.stdout) == [*expected_maps(slurm, remap_root=True), ["0"]]
    done = slurm.srun(image, "--container-name=maps", "sh", "-c", f"{MAPS}; id -u; stat -c %u /bin/busybox")
    assert done.returncode == 0, done.stderr
    uid = str(slurm.user.uid)
    assert id_maps(done.stdout) == [*expected_maps(slurm, remap_root=False), [uid], [uid]]
    work = slurm.user.home / "work"
    (work / "busybox.sqsh").write_bytes(busybox_sqsh.read_bytes())
    done = slurm.srun("--container-image=./work/busybox.sqsh", "sh", "-c", f"{MAPS}; stat -c %u /bin/busybox")
    assert done.returncode == 0, done.stderr
    assert id_maps(done.stdout) == [*expected_maps(slurm, remap_root=False), [uid]]  # image files are the user's


def test_id_maps_on_two_nodes(slurm, busybox_uri):
    done = slurm.user.run(["srun", "-N2", "-n4", f"--container-image={busybox_uri}", "cat", "/proc/self/uid_map"],
                          env=slurm.env(), timeout=300)
    assert done.returncode == 0, done.stderr
    uid = str(slurm.user.uid)
    assert id_maps(done.stdout) == [[uid, uid, "1"]] * 4


def test_import_lines_every_time(slurm, busybox_uri):
    expected = [f"pyenroot: importing docker image: {busybox_uri}", f"pyenroot: imported docker image: {busybox_uri}"]
    for _ in range(2):  # the second step finds the image in the cache
        done = slurm.srun(f"--container-image={busybox_uri}", "true")
        assert done.returncode == 0, done.stderr
        assert import_lines(done.stderr) == expected
    done = slurm.user.run(["srun", "-N2", "-n4", f"--container-image={busybox_uri}", "true"],
                          env=slurm.env(), timeout=300)
    assert done.returncode == 0, done.stderr
    lines = import_lines(done.stderr)
    assert sorted(lines) == sorted(expected * 2)  # once per node


def test_sbatch_script_sees_enroot_ids_and_import_lines(slurm, busybox_uri):
    escaped = busybox_uri.replace("#", "\\#")
    script = f"#!/bin/sh\n#SBATCH --container-image={escaped}\n{MAPS}\n"
    done, log = slurm.sbatch(script)
    assert done.returncode == 0, done.stderr + log
    assert [f"pyenroot: importing docker image: {busybox_uri}",
            f"pyenroot: imported docker image: {busybox_uri}"] == import_lines(log)
    assert id_maps(log) == expected_maps(slurm, remap_root=False)
    script = f"#!/bin/sh\n#SBATCH --container-image={escaped}\n#SBATCH --container-remap-root\n{MAPS}\n"
    done, log = slurm.sbatch(script)
    assert done.returncode == 0, done.stderr + log
    assert id_maps(log) == expected_maps(slurm, remap_root=True)


def test_shadow_entry_for_the_user(slurm, debian_uri):
    script = 'grep -c "^$(id -un):" /etc/shadow'
    done = slurm.srun(f"--container-image={debian_uri}", "sh", "-c", script)
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
    done = slurm.user.run(["srun", "-N2", "-n2", f"--container-image={debian_uri}", "sh", "-c", script],
                          env=slurm.env(), timeout=300)
    assert (done.returncode, done.stdout) == (0, "1\n1\n"), done.stderr
    escaped = debian_uri.replace("#", "\\#")
    done, log = slurm.sbatch(f"#!/bin/sh\n#SBATCH --container-image={escaped}\n{script}\n")
    assert done.returncode == 0, done.stderr + log
    assert log.splitlines()[-1] == "1"


def test_removed_container_is_gone(slurm, busybox_uri):
    image = f"--container-image={busybox_uri}"
    marker = slurm.user.home / "running"
    background = slurm.popen("-w", "node1", image, "--container-name=doomed", "--container-writable",
                             f"--container-mounts={slurm.user.home}", "sh", "-c",
                             f"echo old > /state; touch {marker}; sleep 300")
    try:
        wait_for(marker.exists, "the background step")
        removed = slurm.pyenroot("remove", "-f", "pyxis_doomed")
        assert removed.returncode == 0, removed.stderr
        assert "stopped" in removed.stderr
        background.communicate(timeout=120)  # its processes were stopped: the step ends
        assert background.returncode != 0
        done = slurm.srun("-w", "node1", "--container-name=doomed:exec", "cat", "/state")
        assert done.returncode != 0
        assert "does not exist" in done.stderr
        done = slurm.srun("-w", "node1", image, "--container-name=doomed:no_exec", "sh", "-c",
                          "cat /state 2>/dev/null || echo fresh")
        assert (done.returncode, done.stdout) == (0, "fresh\n"), done.stderr
    finally:
        background.kill()
        background.communicate()


def _attach_to_unnamed_step(slurm, image_option: str) -> None:
    marker = slurm.user.home / "job-id"
    marker.unlink(missing_ok=True)
    background = slurm.popen("-w", "node1", image_option, "--container-writable",
                             f"--container-mounts={slurm.user.home}", "sh", "-c",
                             f"echo inside > /state; echo $SLURM_JOB_ID.$SLURM_STEP_ID > {marker}.tmp; "
                             f"mv {marker}.tmp {marker}; sleep 300")
    try:
        wait_for(marker.exists, "the unnamed step")
        label = marker.read_text().strip()
        done = slurm.srun("-w", "node1", "--overlap", f"--jobid={label.split('.')[0]}",
                          f"--container-name={label}", "cat", "/state")
        assert (done.returncode, done.stdout) == (0, "inside\n"), done.stderr
        assert "reusing existing container namespaces" in done.stderr
    finally:
        background.kill()
        background.communicate()


def test_attach_to_running_unnamed_step(slurm, busybox_uri, busybox_sqsh):
    _attach_to_unnamed_step(slurm, f"--container-image={busybox_uri}")
    (slurm.user.home / "work" / "busybox.sqsh").write_bytes(busybox_sqsh.read_bytes())
    _attach_to_unnamed_step(slurm, f"--container-image={slurm.user.home}/work/busybox.sqsh")
