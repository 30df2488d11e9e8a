"""--container-mounts (pyxis tests/mounts.bats)."""


def run(slurm, image, mounts, script):
    return slurm.srun(f"--container-image={image}", f"--container-mounts={mounts}", "sh", "-c", script)


def test_directory_file_and_device(slurm, busybox_uri):
    work = slurm.user.make_dir("work")
    (work / "file.txt").write_text("hello\n")
    done = run(slurm, busybox_uri, f"{work}:/w,./work/file.txt:/f.txt,/dev/null:/null",
               "ls /w; cat /f.txt; test -c /null && echo chardev")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "file.txt\nhello\nchardev\n"


def test_short_form_and_read_only(slurm, busybox_uri):
    work = slurm.user.make_dir("work")
    done = run(slurm, busybox_uri, f"{work}:{work}:ro", f"ls -d {work}; touch {work}/x")
    assert done.returncode != 0
    assert work.as_posix() in done.stdout
    assert "Read-only file system" in done.stderr


def test_tmpfs_and_umount(slurm, busybox_uri):
    done = run(slurm, busybox_uri, "tmpfs:/mytmpfs", "grep ' /mytmpfs ' /proc/mounts | cut -d' ' -f3")
    assert (done.returncode, done.stdout) == (0, "tmpfs\n"), done.stderr
    done = slurm.srun(f"--container-image={busybox_uri}", "--container-mount-home",
                      "--container-mounts=umount:" + str(slurm.user.home), "sh", "-c",
                      f"grep -c ' {slurm.user.home} ' /proc/mounts || true")
    assert done.stdout.strip() == "0", done.stderr


def test_spaces_in_paths(slurm, busybox_uri):
    spaced = slurm.user.make_dir("with space")
    (spaced / "f").write_text("x")
    done = run(slurm, busybox_uri, f"{spaced}:/in side", "ls '/in side'")
    assert (done.returncode, done.stdout) == (0, "f\n"), done.stderr


def test_missing_source(slurm, busybox_uri):
    done = run(slurm, busybox_uri, f"{slurm.user.home}:/ok,/does/not/exist:/x", "true")
    assert done.returncode != 0
    assert "source path does not exist: /does/not/exist" in done.stderr


def test_mount_home(slurm, busybox_uri):
    home = str(slurm.user.home)
    script = f"grep -c ' {home} ' /proc/mounts || true"
    done = slurm.srun(f"--container-image={busybox_uri}", "--container-mount-home", "--no-container-remap-root",
                      "sh", "-c", script)
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
    done = slurm.srun(f"--container-image={busybox_uri}", "--no-container-mount-home", "sh", "-c", script)
    assert (done.returncode, done.stdout) == (0, "0\n"), done.stderr
