"""The fan-out's rules (pyenroot/slurm/fanout.py): when to broadcast, the broadcast's description, its checks."""

from __future__ import annotations

import os

from pyenroot.slurm import fanout, reporter, state

DIGEST = "sha256:" + "ab" * 32


def request(**changes) -> state.StepRequest:
    return state.StepRequest(**{"job": 7, "step": 0, "image": "reg#busybox:1", **changes})


def test_auto_broadcasts_only_node_local_caches_of_multi_node_steps():
    assert fanout.should_broadcast("auto", 4, cache_shared=False)
    assert not fanout.should_broadcast("auto", 4, cache_shared=True)
    assert not fanout.should_broadcast("auto", 1, cache_shared=False)
    assert fanout.should_broadcast("sbcast", 1, cache_shared=True)
    assert not fanout.should_broadcast("off", 4, cache_shared=False)


def test_shared_by_filesystem_type_or_declared_directory():
    assert fanout.cache_is_shared("/home/u/.cache/enroot", "nfs4", ())
    assert fanout.cache_is_shared("/scratch/u/cache", "lustre", ())
    assert not fanout.cache_is_shared("/tmp/cache", "tmpfs", ())
    assert fanout.cache_is_shared("/home/u/cache", "ext4", fanout.shared_paths("/home:relative"))
    assert not fanout.cache_is_shared("/homework/cache", "ext4", fanout.shared_paths("/home"))


def test_description_round_trip_and_garbage():
    sent = fanout.Broadcast(path="/tmp/x.sqsh", size=10, digest=DIGEST, image="reg#busybox:1")
    assert fanout.Broadcast.decode(sent.encode()) == sent
    for bad in ("", "{", "[]", '{"path": 1}', sent.encode().replace("sha256:", "md5:"),
                sent.encode().replace("10", '"10"')):
        assert fanout.Broadcast.decode(bad) is None


def test_pinned_keeps_an_existing_digest():
    assert fanout.pinned("reg#busybox:1", DIGEST) == f"reg#busybox:1@{DIGEST}"
    assert fanout.pinned(f"reg#busybox@{DIGEST}", "sha256:" + "cd" * 32) == f"reg#busybox@{DIGEST}"


def test_problems_name_what_is_wrong():
    name = fanout.broadcast_name(1000, 7, 0, DIGEST)
    sent = fanout.Broadcast(path=f"/tmp/{name}", size=4096, digest=DIGEST, image="reg#busybox:1")
    assert fanout.problem_with(sent, request(), 1000, 4096) is None
    assert "did not arrive" in fanout.problem_with(sent, request(), 1000, None)
    assert "2048 of 4096" in fanout.problem_with(sent, request(), 1000, 2048)
    assert "made for image" in fanout.problem_with(sent, request(image="other:2"), 1000, 4096)
    assert "not this step's file" in fanout.problem_with(sent, request(step=1), 1000, 4096)
    elsewhere = fanout.Broadcast(path="/home/u/important.sqsh", size=4096, digest=DIGEST, image="reg#busybox:1")
    assert "not this step's file" in fanout.problem_with(elsewhere, request(), 1000, 4096)


def test_receive_refuses_a_damaged_copy_and_removes_it(tmp_path, capsys):
    uid = os.getuid()
    path = tmp_path / fanout.broadcast_name(uid, 7, 0, DIGEST)
    path.write_bytes(b"not a squashfs image" * 300)
    tmp_path.chmod(0o755)
    sent = fanout.Broadcast(path=str(path), size=path.stat().st_size, digest=DIGEST, image="reg#busybox:1")
    got = fanout.receive(request(broadcast=sent.encode()), reporter.Reporter(None))
    assert got is None
    line = capsys.readouterr().err
    assert f"not using the broadcast image on {os.uname().nodename}: not a squashfs image" in line
    assert line.count("\n") == 1
    assert not path.exists()


def test_discard_leaves_files_of_other_names_alone(tmp_path):
    keep = tmp_path / "important.sqsh"
    keep.write_bytes(b"x")
    sent = fanout.Broadcast(path=str(keep), size=1, digest=DIGEST, image="reg#busybox:1")
    fanout.discard_unused(request(broadcast=sent.encode()), None)
    assert keep.exists()
