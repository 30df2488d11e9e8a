"""A Slurm step takes its image from the site-wide image store: no blob is downloaded and nothing is built, and
with the tag resolved by `store add` within PYENROOT_IMAGE_STORE_TTL the registry is not asked at all."""

from __future__ import annotations

import os

import pytest

from tests.integration import test_image_cache

proxy = test_image_cache.proxy  # the counting proxy in front of the registry (a fixture)


@pytest.fixture
def store(session_dir, other_account, request):
    path = session_dir / "stores" / f"slurm-{request.node.name[:60]}"
    path.parent.mkdir(exist_ok=True, mode=0o755)
    path.mkdir(mode=0o755)
    os.chown(path, other_account.pw_uid, other_account.pw_gid)
    return path


def test_a_step_uses_the_store(slurm, other_user, store, proxy, busybox_image):
    image = f"{proxy.host}#{busybox_image.repository}:{busybox_image.tag}"
    added = other_user.pyenroot("store", "add", f"docker://{image}",
                                env={"ENROOT_ALLOW_HTTP": "y", "PYENROOT_IMAGE_STORE": str(store)})
    assert added.returncode == 0, added.stderr
    requests = proxy.count("GET", "") + proxy.count("HEAD", "")
    env = {"PYENROOT_IMAGE_STORE": str(store), "PYENROOT_IMAGE_STORE_TTL": "1h"}
    done = slurm.user.run(["srun", "-N2", "-n2", f"--container-image={image}", "cat", "/etc/pyenroot-test"],
                          env=slurm.env(env), timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["second", "layer"] * 2
    assert "warning" not in done.stderr
    assert proxy.count("GET", "") + proxy.count("HEAD", "") == requests  # not one request, on either node
    cache = slurm.user.home / ".cache/enroot"
    assert not (cache / "blobs/sha256").is_dir() or not os.listdir(cache / "blobs/sha256")
    assert not (cache / "squashfs").is_dir() or not list((cache / "squashfs").glob("*.sqsh"))
