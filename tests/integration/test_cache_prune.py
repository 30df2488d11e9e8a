"""`pyenroot cache list` and `cache prune` as the unprivileged user: least recently used first, never what is in
use, and a PYENROOT_CACHE_MAX_SIZE that holds while imports, starts and prunes run side by side."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading

import pytest

from pyenroot.devtools import imagebuilder as ib
from tests.integration.imagecheck import HTTP, import_as, squashfs_tree, uri

E = ib.Entry
LIMIT = "3M"
PATH = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]


@pytest.fixture(scope="module")
def prune_images(registry, pusher, busybox_rootfs_dir) -> list[str]:
    """Eight images: the same busybox layer below a top layer of their own (about 256 KB each)."""
    base = ib.tar_of_directory(busybox_rootfs_dir)
    rng = random.Random(13)
    uris = []
    for n in range(8):
        top = ib.tar_bytes([E("etc", "dir"), E("etc/which", data=f"image {n}\n".encode()),
                            E("etc/filler", data=rng.randbytes(256 << 10))])
        pusher.image(f"test/prune-{n}", "v1", ib.build_image([base, top], env=PATH))
        uris.append(uri(registry, f"test/prune-{n}", "v1"))
    return uris


def listing(user) -> list[dict]:
    done = user.pyenroot("cache", "list", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_list_shows_blobs_and_images_and_who_uses_them(user, prune_images):
    result, _ = import_as(user, prune_images[0])
    assert result.returncode == 0, result.stderr
    entries = listing(user)
    kinds = sorted(e["kind"] for e in entries)
    assert kinds.count("squashfs") == 1 and kinds.count("blob") == 3  # config and two layers
    squashfs, = (e for e in entries if e["kind"] == "squashfs")
    assert squashfs["images"] == [prune_images[0]] and squashfs["size"] > 0
    layers = [e for e in entries if e["kind"] == "blob" and e["images"]]
    assert len(layers) == 2 and all(e["images"] == [prune_images[0]] for e in layers)
    text = user.pyenroot("cache", "list")
    assert text.returncode == 0 and "total" in text.stdout.splitlines()[-1]


def test_prune_takes_the_least_recently_used_and_skips_what_is_held(user, prune_images):
    for source in prune_images[:2]:
        result, _ = import_as(user, source, source.rsplit("/", 1)[1] + ".sqsh")
        assert result.returncode == 0, result.stderr
    dry = user.pyenroot("cache", "prune", "--max-size", "0", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove" in dry.stdout and len(listing(user)) == 7  # the shared busybox layer counts once
    newest = max((e for e in listing(user) if e["kind"] == "squashfs"), key=lambda e: e["last_use"])
    lock = user.home / ".cache/enroot/squashfs" / f"{newest['name']}.lock"
    # A reader (a step's container, an import) holds a shared flock while it uses the entry.
    holder = subprocess.Popen(["flock", "-s", str(lock), "sleep", "600"], user=user.uid, group=user.gid,
                              extra_groups=[], start_new_session=True)
    try:
        while user.run(["flock", "-x", "-n", str(lock), "true"]).returncode == 0:
            pass  # until the holder has its lock
        done = user.pyenroot("cache", "prune", "--max-size", "0")
        assert done.returncode == 0, done.stderr
        assert f"in use, kept squashfs {newest['name']}" in done.stdout
        assert [e["name"] for e in listing(user)] == [newest["name"]]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and its sleep, which holds the lock too
        holder.wait()
    done = user.pyenroot("cache", "prune", "--older-than", "0s")
    assert done.returncode == 0, done.stderr
    assert listing(user) == []


def test_bad_prune_arguments(user):
    for argv in (["prune"], ["prune", "--max-size", "lots"], ["prune", "--older-than", "soon"], ["tidy"]):
        done = user.pyenroot("cache", *argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert len(done.stderr.strip().splitlines()) <= 2 and "Traceback" not in done.stderr


def test_the_limit_holds_while_prune_loops_beside_imports_and_starts(user, prune_images):
    env = {**HTTP, "PYENROOT_CACHE_MAX_SIZE": LIMIT}
    stop = threading.Event()
    prunes: list[subprocess.CompletedProcess] = []

    def prune_loop() -> None:
        while not stop.is_set():
            prunes.append(user.pyenroot("cache", "prune", "--max-size", LIMIT))

    def job(n: int) -> subprocess.CompletedProcess:
        out = user.home / f"out-{n}.sqsh"
        script = f'"$0" import -o {out} {prune_images[n]}'
        if n >= 4:  # and start it
            script += f' && "$0" start {out} cat /etc/which'
        return user.run(["sh", "-c", script, str(user.wrapper)], env=env, timeout=600)

    results: dict[int, subprocess.CompletedProcess] = {}
    looping = threading.Thread(target=prune_loop)
    looping.start()
    try:
        workers = [threading.Thread(target=lambda n=n: results.__setitem__(n, job(n))) for n in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        stop.set()
        looping.join()
    for n, result in sorted(results.items()):
        assert result.returncode == 0, (n, result.stderr)
        assert squashfs_tree(user.home / f"out-{n}.sqsh")["etc/which"].data == f"image {n}\n".encode()
        if n >= 4:
            assert result.stdout == f"image {n}\n"
    assert prunes and all(p.returncode == 0 for p in prunes), [p.stderr for p in prunes if p.returncode]
    assert sum(e["size"] for e in listing(user)) <= 3 << 20
