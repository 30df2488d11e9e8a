"""Cluster state through `sinfo --json` / `squeue --json` on the live cluster (pyenroot.slurm.cluster)."""

import time

from pyenroot.slurm.cluster import ClusterState, JsonBackend


def test_nodes_and_jobs(slurm):
    state = ClusterState(slurm.spec.slurm_conf, backend=JsonBackend(slurm.spec.slurm_conf))
    assert {n.name for n in state.nodes()} == {"node1", "node2"}
    marker = slurm.user.home / "running"
    step = slurm.popen("--job-name=state-probe", "sh", "-c", f"touch {marker}; sleep 30")
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.1)
        jobs = [j for j in state.jobs(user=slurm.user.name) if j.name == "state-probe"]
        assert len(jobs) == 1 and jobs[0].state == "running" and jobs[0].nodes in ("node1", "node2")
        assert not state.idle()
    finally:
        slurm.user.run(["scancel", "--name=state-probe"], env=slurm.env())
        step.kill()
        step.communicate()
