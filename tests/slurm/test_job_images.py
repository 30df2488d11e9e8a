"""Within one job, a tag that a step resolved on a node is not resolved again there: later steps of the job ask
the registry nothing and start the image the first one had (a job sees one image per reference), a new job
resolves the tag again, and the job's record ends with the job."""

from __future__ import annotations

import re
import time

import pytest

from pyenroot.devtools import imagebuilder
from tests.helpers.faultproxy import FaultProxy
from tests.slurm.test_fanout import on_node


@pytest.fixture
def proxy(registry):
    server = FaultProxy(registry.url).start()
    yield server
    server.stop()


def wait_for(predicate, what: str, limit: float = 60) -> None:
    """Poll (no timing assertion: the limit only stops a hung test)."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def push_moving(pusher, busybox_rootfs_dir, text: str) -> None:
    """test/moving:latest, whose /etc/which says `text`: pushed again, the tag moves to another image."""
    layer = imagebuilder.tar_bytes([imagebuilder.Entry("etc", "dir"),
                                    imagebuilder.Entry("etc/which", data=f"{text}\n".encode())])
    image = imagebuilder.build_image([imagebuilder.tar_of_directory(busybox_rootfs_dir), layer],
                                     env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
    pusher.image("test/moving", "latest", image)


class Allocation:
    """`salloc --no-shell` on one node, whose steps the test runs with `srun --jobid`."""

    def __init__(self, slurm):
        self.slurm = slurm
        done = slurm.user.run(["salloc", "--no-shell", "-N1", "-w", "node1", "--oversubscribe"], env=slurm.env())
        assert done.returncode == 0, done.stderr
        self.job = re.search(r"Granted job allocation (\d+)", done.stderr).group(1)

    def srun(self, *args: str):
        return self.slurm.user.run(["srun", f"--jobid={self.job}", "-N1", "--oversubscribe", *args],
                                   env=self.slurm.env(), timeout=300)

    def end(self) -> None:
        self.slurm.user.run(["scancel", self.job], env=self.slurm.env())


def manifest_requests(proxy: FaultProxy) -> int:
    return proxy.count("GET", "/manifests/") + proxy.count("HEAD", "/manifests/")


def record_of(slurm, job: str) -> str:
    return f"{slurm.spec.node_runtime}/{slurm.user.uid}/job-{job}.images"


def test_later_steps_of_a_job_ask_the_registry_nothing(slurm, proxy, busybox_image):
    image = f"{proxy.host}#{busybox_image.repository}:{busybox_image.tag}"
    job = Allocation(slurm)
    try:
        first = job.srun(f"--container-image={image}", "cat", "/etc/pyenroot-test")
        assert first.returncode == 0, first.stderr
        asked = manifest_requests(proxy)
        assert asked >= 1
        for _ in range(2):
            later = job.srun(f"--container-image={image}", "cat", "/etc/pyenroot-test")
            assert later.returncode == 0, later.stderr
            assert later.stdout == "second layer\n"
            assert later.stderr.count("imported docker image") == 1  # the lines scripts count stay
        assert manifest_requests(proxy) == asked
        assert on_node(slurm.spec, "node1", "test", "-f", record_of(slurm, job.job)).returncode == 0
    finally:
        job.end()
    wait_for(lambda: on_node(slurm.spec, "node1", "test", "-e", record_of(slurm, job.job)).returncode != 0,
             "the job's record to be removed at job end")
    again = slurm.srun("-w", "node1", f"--container-image={image}", "true")  # a new job resolves the tag
    assert again.returncode == 0, again.stderr
    assert manifest_requests(proxy) > asked


def test_a_job_sees_one_image_per_tag(slurm, pusher, registry, busybox_rootfs_dir):
    image = f"{registry.host}#test/moving:latest"
    push_moving(pusher, busybox_rootfs_dir, "first")
    job = Allocation(slurm)
    try:
        before = job.srun(f"--container-image={image}", "cat", "/etc/which")
        assert before.returncode == 0, before.stderr
        assert before.stdout == "first\n"
        push_moving(pusher, busybox_rootfs_dir, "second")
        after = job.srun(f"--container-image={image}", "cat", "/etc/which")
        assert after.returncode == 0, after.stderr
        assert after.stdout == "first\n"  # the job's image for this reference
    finally:
        job.end()
    fresh = slurm.srun("-w", "node1", f"--container-image={image}", "cat", "/etc/which")
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout == "second\n"


def test_a_digest_pinned_image_built_before_costs_no_request(slurm, proxy, busybox_image):
    image = f"{proxy.host}#{busybox_image.repository}:{busybox_image.tag}"
    digest = slurm.pyenroot("digest", f"docker://{image}").stdout.strip()
    pinned = f"{image}@{digest}"
    first = slurm.srun(f"--container-image={pinned}", "true")
    assert first.returncode == 0, first.stderr
    proxy.log.clear()
    again = slurm.srun(f"--container-image={pinned}", "cat", "/etc/pyenroot-test")  # a job of its own
    assert again.returncode == 0, again.stderr
    assert again.stdout == "second layer\n"
    assert proxy.log == []  # not even the registry's /v2/


def test_the_first_step_resolves_the_tag_over_the_light_transport(slurm, proxy, busybox_image):
    """A job's first step whose image was built before asks for the manifest only, and over http.client (which
    asks for no compression; requests would): finding the image loads no `requests`."""
    image = f"{proxy.host}#{busybox_image.repository}:{busybox_image.tag}"
    built = slurm.srun("-w", "node1", f"--container-image={image}", "true")
    assert built.returncode == 0, built.stderr
    proxy.seen_headers.clear()
    again = slurm.srun("-w", "node1", f"--container-image={image}", "cat", "/etc/pyenroot-test")  # a new job
    assert again.returncode == 0, again.stderr
    assert again.stdout == "second layer\n"
    paths = [path for path, _ in proxy.seen_headers]
    assert any("/manifests/" in path for path in paths) and not any("/blobs/" in path for path in paths)
    assert {headers.get("Accept-Encoding") for _, headers in proxy.seen_headers} == {"identity"}
