"""The local cluster's node command: each node's own /tmp and /run, the shared paths bound back."""

from pathlib import Path

from pyenroot.devtools import devcluster


def test_kept_paths_outermost_first_and_only_under_tmp():
    spec = devcluster.ClusterSpec(directory=Path("/tmp/s/cluster"),
                                  shared_tmp_paths=(Path("/tmp/s"), Path("/tmp/p/q"), Path("/var/x"), Path("/tmp")))
    assert devcluster._kept_under_tmp(spec) == ["s", "p/q"]


def test_node_command_with_and_without_private_tmp():
    spec = devcluster.ClusterSpec(directory=Path("/tmp/my cluster"))
    script = devcluster._node_command(spec, spec.nodes[0])[7]
    assert "pyenroot-tmp /tmp" in script and "pyenroot-run /run" in script
    assert "mount --rbind '/run/pyenroot-host-tmp/my cluster' '/tmp/my cluster'" in script
    assert script.index("pyenroot-tmp /tmp") < script.index("exec slurmd")
    shared = devcluster.ClusterSpec(directory=Path("/tmp/c"), private_tmp=False)
    assert "/tmp" not in devcluster._node_command(shared, shared.nodes[0])[7].replace('"$1"', "")


def test_slurm_conf_sets_tmpfs_and_no_default_mpi():
    text = devcluster.render(devcluster.ClusterSpec(directory=Path("/tmp/c")))["slurm.conf"]
    assert "MpiDefault=none\n" in text and "TmpFS=/tmp\n" in text
