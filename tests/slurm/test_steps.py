"""Tasks, nodes, concurrent steps, batch scripts and namespaces (pyxis tests/concurrency.bats, sbatch/,
unshare*.bats)."""

import concurrent.futures
from collections import Counter

from tests.helpers import debpkg


def test_tasks_share_one_container(slurm, busybox_uri):
    done = slurm.srun("-n4", f"--container-image={busybox_uri}", "readlink", "/proc/self/ns/mnt")
    assert done.returncode == 0, done.stderr
    inodes = done.stdout.split()
    assert len(inodes) == 4 and len(set(inodes)) == 1
    host = slurm.user.run(["readlink", "/proc/self/ns/mnt"]).stdout.strip()
    assert inodes[0] != host


def test_two_nodes_import_once_each(slurm, busybox_uri):
    script = 'echo "$SLURMD_NODENAME $(hostname) $(readlink /proc/self/ns/mnt) $(cat /etc/pyenroot-test)"'
    done = slurm.user.run(["srun", "-N2", "-n4", f"--container-image={busybox_uri}", "sh", "-c", script],
                          env=slurm.env(), timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split(" ", 3) for line in done.stdout.splitlines()]
    assert len(rows) == 4
    assert {r[0] for r in rows} == {"node1", "node2"}
    assert all(r[0] == r[1] and r[3] == "second layer" for r in rows)
    per_node = {node: {r[2] for r in rows if r[0] == node} for node in ("node1", "node2")}
    assert all(len(inodes) == 1 for inodes in per_node.values())  # one container per node
    assert done.stderr.count("imported docker image") == 2


def _parallel(slurm, argvs: list[list[str]]) -> list:
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        return list(pool.map(lambda argv: slurm.srun(*argv, timeout=600), argvs))


def test_concurrent_named_containers(slurm, busybox_uri):
    created = _parallel(slurm, [[f"--container-image={busybox_uri}", f"--container-name=par{i}", "true"]
                                for i in range(5)])
    assert [r.returncode for r in created] == [0] * 5, "\n".join(r.stderr for r in created)
    reused = _parallel(slurm, [[f"--container-name=par{i % 5}:no_exec", "cat", "/etc/pyenroot-test"]
                               for i in range(50)])
    assert Counter(r.returncode for r in reused) == {0: 50}, [r.stderr for r in reused if r.returncode]
    assert all(r.stdout == "second layer\n" for r in reused)


def test_sbatch_script_runs_in_container(slurm, busybox_uri):
    escaped = busybox_uri.replace("#", "\\#")
    script = f"#!/bin/sh\n#SBATCH --container-image={escaped}\ncat /etc/pyenroot-test\necho $IMAGE_VAR\n"
    done, log = slurm.sbatch(script)
    assert done.returncode == 0, done.stderr + log
    assert "second layer\nbusybox\n" in log
    done, log = slurm.sbatch("#!/bin/sh\ncat /etc/pyenroot-test\n", f"--container-image={busybox_uri}")
    assert done.returncode == 0, done.stderr + log
    assert "second layer" in log


def test_unshare_namespaces(slurm, busybox_uri):
    script = "echo $(readlink /proc/self/ns/net) $(readlink /proc/self/ns/ipc) $(readlink /proc/self/ns/uts)"
    host = slurm.srun("-w", "node1", "sh", "-c", script).stdout.split()  # each node has its own UTS namespace
    shared = slurm.srun("-w", "node1", f"--container-image={busybox_uri}", "sh", "-c", script)
    assert shared.stdout.split() == host, shared.stderr
    done = slurm.srun("-w", "node1", "-n2", f"--container-image={busybox_uri}", "--container-unshare=net,ipc,uts",
                      "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()  # one line per task
    assert first == second  # both tasks in the same namespaces
    assert all(a != b for a, b in zip(first.split(), host, strict=True))
    done = slurm.srun("cat", "/proc/self/net/dev", env={"PYXIS_CONTAINER_IMAGE": busybox_uri,
                                                           "PYXIS_CONTAINER_UNSHARE": "net"})
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0].strip() for line in done.stdout.splitlines()[2:]] == ["lo"]


def test_two_nodes_create_one_named_container(slurm, busybox_uri):
    """Both nodes of a step create the same named container on shared storage: one wins, both run."""
    done = slurm.user.run(["srun", "-N2", f"--container-image={busybox_uri}", "--container-name=shared",
                           "--container-writable", "sh", "-c", "echo $SLURMD_NODENAME >> /nodes"],
                          env=slurm.env(), timeout=300)
    assert done.returncode == 0, done.stderr
    again = slurm.srun("--container-name=shared", "cat", "/nodes")
    assert sorted(again.stdout.split()) == ["node1", "node2"], again.stderr


def test_debian_image_as_root_with_package_tools(slurm, debian_uri):
    """A real distribution: its os-release, and as remapped root the ownership changes dpkg makes succeed."""
    script = (". /etc/os-release; echo $ID; touch /tmp/f && chown nobody:nogroup /tmp/f && echo chown-ok; "
              "setpriv --reuid=65534 true && echo setuid-ok")
    done = slurm.srun(f"--container-image={debian_uri}", "--container-remap-root", "--container-writable", "bash",
                      "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "debian\nchown-ok\nsetuid-ok\n"


def test_dpkg_replaces_a_directory_of_the_image_in_a_writable_unnamed_container(slurm, debian_uri):
    """A package install renames directories of the image (pyxis+enroot unpack, so it works there): no EXDEV."""
    deb = debpkg.directory_swap_deb(slurm.user.make_dir("debs"))
    script = (f"dpkg -i /pkg.deb >/dev/null && cat {debpkg.REPLACED_DIRECTORY} && "
              f"test -f {debpkg.NEW_DIRECTORY_FILE} && echo installed")
    done = slurm.srun(f"--container-image={debian_uri}", "--container-remap-root", "--container-writable",
                      f"--container-mounts={deb}:/pkg.deb", "bash", "-c", script)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout == debpkg.REPLACEMENT_TEXT + "installed\n"
