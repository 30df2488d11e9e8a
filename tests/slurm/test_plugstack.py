"""plugstack.conf arguments of the plugin (pyxis config.c): validation, sbatch_support, importer, use_squashfuse."""


def test_unknown_argument_refuses_to_load(slurm, plugin_args):
    plugin_args(bogus="1")
    done = slurm.srun("true")
    assert done.returncode != 0
    assert "unknown configuration option: bogus=1" in done.stderr


def test_invalid_boolean_refuses_to_load(slurm, plugin_args):
    plugin_args(use_squashfuse="maybe")
    done = slurm.srun("true")
    assert done.returncode != 0
    assert "use_squashfuse: invalid value: maybe" in done.stderr


def test_invalid_fanout_mode_refuses_to_load(slurm, plugin_args):
    plugin_args(fanout="always")
    done = slurm.srun("true")
    assert done.returncode != 0
    assert "fanout: invalid value: always" in done.stderr


def test_sbatch_support_off(slurm, plugin_args, busybox_uri):
    plugin_args(sbatch_support="0")
    done = slurm.user.run(["sbatch", f"--container-image={busybox_uri}", "--wrap", "true"], env=slurm.env())
    assert done.returncode != 0
    assert "unrecognized option" in done.stderr


def test_external_importer(slurm, plugin_args, busybox_sqsh, session_dir):
    """`IMPORTER get URI` prints a squashfs path; `release` may come twice and must clean up."""
    work = slurm.user.make_dir("work")
    importer = session_dir / "importer.sh"
    importer.write_text(
        "#!/bin/sh\n"
        f"out={work}/imported-$SLURM_JOB_ID.sqsh\n"
        'case "$1" in\n'
        f'  get) echo "$2" > {work}/uri; cp {busybox_sqsh} "$out" && echo "$out" ;;\n'
        '  release) rm -f "$out" ;;\n'
        "esac\n")
    importer.chmod(0o755)
    plugin_args(importer=str(importer))
    done = slurm.srun("--container-image=example/thing:1", "ls", "/bin/busybox")
    assert (done.returncode, done.stdout) == (0, "/bin/busybox\n"), done.stderr
    assert "imported docker image: example/thing:1" in done.stderr
    assert (work / "uri").read_text() == "docker://example/thing:1\n"
    assert not list(work.glob("imported-*.sqsh"))  # released


def test_without_squashfuse_unnamed_containers_are_created_and_removed(slurm, plugin_args, busybox_uri):
    plugin_args(use_squashfuse="0")
    done = slurm.srun(f"--container-image={busybox_uri}", "sh", "-c", "cat /etc/pyenroot-test")
    assert (done.returncode, done.stdout) == (0, "second layer\n"), done.stderr
    assert "pyxis_" not in slurm.pyenroot("list").stdout
