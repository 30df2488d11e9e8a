"""Slurm fan-out on 4 simulated nodes, each with its own /tmp (tmpfs) as the image cache and its own /run:
srun imports once and sbcasts the image; every node runs it; a node whose copy is bad imports itself."""

from __future__ import annotations

import subprocess

import pytest

from pyenroot.devtools import devcluster
from tests.helpers.faultproxy import FaultProxy
from tests.slurm.conftest import Slurm, running_cluster, shared_tmp

NODES = 4
NODE_CACHE = "/tmp/pyenroot-fanout-cache"  # the same name on every node, a different directory on each


@pytest.fixture(scope="module")
def four_nodes(session_dir, host_setup, pyenroot_wrapper, spank_plugin, account, tmp_path_factory):
    with running_cluster(session_dir / "cluster-fanout", spank_plugin, {"pyenroot": str(pyenroot_wrapper)},
                         shared_tmp(session_dir, tmp_path_factory), node_count=NODES) as spec:
        yield spec


@pytest.fixture(scope="module")
def proxy(registry):
    server = FaultProxy(registry.url).start()
    yield server
    server.stop()


@pytest.fixture
def cluster(four_nodes, user) -> Slurm:
    user.make_dir("work")
    yield Slurm(four_nodes, user)
    for node in four_nodes.nodes:  # the node-local caches start empty for every test
        on_node(four_nodes, node.name, "rm", "-rf", NODE_CACHE)
    subprocess.run(["rm", "-rf", NODE_CACHE], check=False)


def on_node(spec: devcluster.ClusterSpec, node: str, *argv: str) -> subprocess.CompletedProcess:
    """A command as root in a node's mount namespace (its own /tmp)."""
    pid = (spec.directory / "run" / f"slurmd-{node}.pid").read_text().split()[0]
    return subprocess.run(["nsenter", "-t", pid, "-m", *argv], capture_output=True, text=True)


def image_uri(proxy: FaultProxy, busybox_image) -> str:
    return f"{proxy.host}#{busybox_image.repository}:{busybox_image.tag}"


def blob_downloads(proxy: FaultProxy, busybox_image) -> dict[str, int]:
    return {layer.digest: proxy.count("GET", f"/blobs/{layer.digest}") for layer in busybox_image.image.layers}


def run_on_all_nodes(slurm: Slurm, uri: str) -> subprocess.CompletedProcess:
    """Each task prints the image's file, and the broadcast's variable if it leaked into the task (it must not)."""
    argv = ["srun", f"-N{NODES}", "--oversubscribe", f"--container-image={uri}", "sh", "-c",
            "cat /etc/pyenroot-test; printenv PYENROOT_BROADCAST; true"]
    return slurm.user.run(argv, env=slurm.env({"ENROOT_CACHE_PATH": NODE_CACHE}), timeout=600)


def broadcast_files(spec: devcluster.ClusterSpec) -> list[str]:
    found = []
    for node in spec.nodes:
        listing = on_node(spec, node.name, "sh", "-c", "ls /tmp | grep '^pyenroot-.*sqsh$' || true").stdout
        found += [f"{node.name}:{name}" for name in listing.split()]
    return found


def test_node_local_caches_download_each_blob_once(cluster, proxy, busybox_image):
    proxy.log.clear()
    done = run_on_all_nodes(cluster, image_uri(proxy, busybox_image))
    assert (done.returncode, done.stdout) == (0, "second layer\n" * NODES), done.stderr
    assert set(blob_downloads(proxy, busybox_image).values()) == {1}, proxy.log
    assert done.stderr.count("imported docker image") == NODES  # every node prints pyxis's lines
    assert "fanout: not using" not in done.stderr
    assert broadcast_files(cluster.spec) == []  # removed at step end


def test_a_node_with_a_foreign_file_imports_itself(cluster, proxy, busybox_image, other_user):
    """node2's copy cannot arrive (another user's file holds its name): node2 says so in one line and imports the
    image itself; the others use the broadcast."""
    from pyenroot.slurm import fanout

    digest = cluster.pyenroot("digest", f"docker://{image_uri(proxy, busybox_image)}").stdout.strip()
    probe = cluster.user.run(["srun", "-N1", "sh", "-c", "echo $SLURM_JOB_ID"], env=cluster.env())
    next_job = int(probe.stdout.strip()) + 1  # this cluster runs one job at a time
    planted = f"/tmp/{fanout.broadcast_name(cluster.user.uid, next_job, 0, digest)}"
    on_node(cluster.spec, "node2", "sh", "-c", f"echo planted > {planted} && chown {other_user.uid} {planted}")
    proxy.log.clear()
    done = run_on_all_nodes(cluster, image_uri(proxy, busybox_image))
    assert (done.returncode, done.stdout) == (0, "second layer\n" * NODES), done.stderr
    fallbacks = [line for line in done.stderr.splitlines() if "fanout: not using the broadcast image" in line]
    assert len(fallbacks) == 1 and "node2" in fallbacks[0], done.stderr
    assert set(blob_downloads(proxy, busybox_image).values()) == {2}, proxy.log  # srun + node2
    assert on_node(cluster.spec, "node2", "cat", planted).stdout == "planted\n"  # not ours: left alone
    on_node(cluster.spec, "node2", "rm", "-f", planted)


def test_fanout_off_keeps_every_node_importing(cluster, proxy, busybox_image):
    conf = cluster.spec.directory / "etc" / "plugstack.conf.d" / "pyenroot.conf"
    original = conf.read_text()
    spec = devcluster.ClusterSpec(**{**cluster.spec.__dict__, "plugin_args": {**cluster.spec.plugin_args,
                                                                              "fanout": "off"}})
    conf.write_text(devcluster.render(spec)["plugstack.conf.d/pyenroot.conf"])
    try:
        proxy.log.clear()
        done = run_on_all_nodes(cluster, image_uri(proxy, busybox_image))
    finally:
        conf.write_text(original)
    assert (done.returncode, done.stdout) == (0, "second layer\n" * NODES), done.stderr
    assert set(blob_downloads(proxy, busybox_image).values()) == {NODES}, proxy.log
