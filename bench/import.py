#!/usr/bin/env python3
"""Benchmark `pyenroot import` against the peers that install from Debian, cold and warm cache.

Builds a large multi-layer image (default: >= 1.5 GB uncompressed, 9 gzip layers, ~50,000 files, whiteouts and
an opaque directory), pushes it to a loopback registry, then times, interleaved, for each repetition:

- pyenroot import (cold: empty cache; warm: blobs cached, image not built yet, with the default settings, where
  PYENROOT_CACHE_LAYER_COPIES=auto writes no zstd layer copies behind igzip; cold-copies and warm-copies: the
  same with PYENROOT_CACHE_LAYER_COPIES=yes, so the warm rebuild reads the copies the cold import wrote;
  cached: the same image built before, so the built-image cache serves it); each warm rebuild is compared with
  tar2sqfs alone on the merged content (the merged tar synced to disk first, so its writeback is not timed),
  and the layer copies' disk use with the gzip blobs'.
- skopeo copy (to an OCI directory) + umoci unpack --rootless + mksquashfs -comp lz4 (cold: empty OCI dir;
  warm: blobs already in the OCI dir)
- charliecloud ch-image pull + ch-convert to squashfs (cold: empty storage; warm: storage kept)
- podman pull, rootless (cold: empty storage; warm: image present)

Prints medians, ratios to pyenroot and the peak RSS of the largest process. Peers that are not installed or
fail are reported as such (Debian packages: skopeo umoci charliecloud-builders podman). Run as root it drops
to the test account (pyenroot-tester) for every command.

    python bench/import.py --small        # a quick check (~100 MB, 8 layers)
    python bench/import.py --repeat 3     # the full benchmark
    python bench/import.py --huge         # 1 million files: peak RSS of the pyenroot process and of its tree
    python bench/import.py --huge --huge-layers 1   # the same million files in one layer

With --huge only the cold import of pyenroot and of the skopeo pipeline run; pyenroot's line gives the peak RSS
of the pyenroot process itself (the target, <= 100 MB) apart from that of the whole process tree, which
includes tar2sqfs (that tool alone holds ~230 MB at a million files: out of pyenroot's hands).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyenroot.devtools import imagebuilder as ib  # noqa: E402
from pyenroot.devtools.registry import LocalRegistry, make_tls  # noqa: E402

CACHE = Path(os.environ.get("PYENROOT_BENCH_CACHE", "/var/cache/pyenroot-tests/bench"))
TEST_USER = "pyenroot-tester"
CACHED_TARGET = 0.5  # seconds, issue 14: an image built before
COLD_TARGET = 0.3  # issue 14: a cold import, as a multiple of the skopeo + umoci + mksquashfs pipeline
WARM_TARGET = 1.5  # issue 14: a warm rebuild, as a multiple of tar2sqfs alone on the merged content
PYENROOT_MODES = ("cold", "warm", "cold-copies", "warm-copies", "cached")


# ------------------------------------------------------------------------------------------ the image


@dataclass(frozen=True)
class Shape:
    layers: int
    files_per_layer: int
    small_file_bytes: int  # average size of a small file
    big_files_per_layer: int
    big_file_bytes: int

    @property
    def label(self) -> str:
        return (f"v2-{self.layers}x{self.files_per_layer}x{self.small_file_bytes}"
                f"+{self.big_files_per_layer}x{self.big_file_bytes}")


FULL = Shape(layers=9, files_per_layer=5600, small_file_bytes=12_000, big_files_per_layer=12, big_file_bytes=12 << 20)
HUGE_FILES = 1_000_000


def huge_shape(layers: int) -> Shape:
    return Shape(layers=layers, files_per_layer=HUGE_FILES // layers, small_file_bytes=64, big_files_per_layer=0,
                 big_file_bytes=0)
SMALL = Shape(layers=8, files_per_layer=800, small_file_bytes=6_000, big_files_per_layer=2, big_file_bytes=4 << 20)


def _corpus(rng: random.Random, size: int) -> bytes:
    """Text-like bytes that compress about 2.5x with gzip, like binaries and libraries do."""
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_0123456789") for _ in range(rng.randint(2, 12)))
             for _ in range(4000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choice(words) for _ in range(64)) + b"\n"
        out += rng.randbytes(48)
    return bytes(out[:size])


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 1_700_000_000
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    if data is not None:
        info.size = len(data)
        tar.addfile(info, __import__("io").BytesIO(data))
    else:
        tar.addfile(info)


def _layer_tar(path: Path, number: int, shape: Shape, corpus: bytes, rng: random.Random) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        root = f"layer{number}"
        _add(tar, root, kind=tarfile.DIRTYPE)
        for d in range(shape.files_per_layer // 200 + 1):
            _add(tar, f"{root}/d{d}", kind=tarfile.DIRTYPE)
        for i in range(shape.files_per_layer):
            size = max(64, int(rng.expovariate(1 / shape.small_file_bytes)))
            start = rng.randrange(0, len(corpus) - size)
            _add(tar, f"{root}/d{i // 200}/f{i}", corpus[start:start + size])
        for i in range(shape.big_files_per_layer):
            start = rng.randrange(0, len(corpus) - max(1, shape.big_file_bytes))
            _add(tar, f"{root}/big{i}.bin", corpus[start:start + shape.big_file_bytes])
        if number > 0:  # whiteouts of the layer below, and one opaque directory
            below = f"layer{number - 1}"
            for i in range(0, 200, 7):
                _add(tar, f"{below}/d0/.wh.f{i}", b"")
            _add(tar, f"{below}/d1", kind=tarfile.DIRTYPE)
            _add(tar, f"{below}/d1/.wh..wh..opq", b"")
            _add(tar, f"{below}/.wh.big0.bin", b"")


def build_blobs(shape: Shape) -> Path:
    """Gzip layer blobs + config + manifest on disk, built once per shape and cached."""
    directory = CACHE / shape.label
    if (directory / "manifest.json").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(42)
    corpus = _corpus(rng, max(16 << 20, 2 * shape.big_file_bytes))
    layers, diff_ids, raw_size = [], [], 0
    for number in range(shape.layers):
        raw = directory / f"layer{number}.tar"
        _layer_tar(raw, number, shape, corpus, rng)
        diff_ids.append(_digest_of_file(raw))
        raw_size += raw.stat().st_size
        subprocess.run(["pigz", "-f", "-1", "-n", str(raw)], check=True)
        gz = raw.with_suffix(".tar.gz")
        layers.append({"mediaType": ib.DOCKER_LAYER_GZIP, "digest": _digest_of_file(gz), "size": gz.stat().st_size,
                       "file": gz.name})
    document = ib.make_config(diff_ids, cmd=["/bin/sh"])
    # charliecloud refuses a config without history (one entry per layer)
    document["history"] = [{"created": "2024-01-01T00:00:00Z", "created_by": f"bench layer {n}"}
                           for n in range(shape.layers)]
    config = json.dumps(document, sort_keys=True).encode()
    (directory / "config.json").write_bytes(config)
    manifest = {"config": {"mediaType": ib.DOCKER_CONFIG, "digest": ib.sha256(config), "size": len(config)},
                "layers": layers, "raw_size": raw_size}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def _digest_of_file(path: Path) -> str:
    import hashlib

    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def push(directory: Path, registry: LocalRegistry, repository: str, tag: str) -> dict:
    manifest = json.loads((directory / "manifest.json").read_text())
    session = __import__("requests").Session()
    if registry.tls:
        session.verify = str(registry.tls.ca_cert)
        session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override verify
    pusher = ib.Pusher(registry.url, session)
    config = (directory / "config.json").read_bytes()
    pusher.blob(repository, ib.Blob(ib.DOCKER_CONFIG, config))
    for layer in manifest["layers"]:
        pusher.blob(repository, ib.Blob(layer["mediaType"], (directory / layer["file"]).read_bytes()))
    document = {"schemaVersion": 2, "mediaType": ib.DOCKER_MANIFEST, "config": manifest["config"],
                "layers": [{k: v for k, v in layer.items() if k != "file"} for layer in manifest["layers"]]}
    pusher.manifest(repository, tag, ib.Blob(ib.DOCKER_MANIFEST, json.dumps(document).encode()))
    return manifest


# ------------------------------------------------------------------------------------------ running


@dataclass
class Runner:
    """Runs commands as the benchmark user and measures wall time and peak RSS."""

    home: Path
    uid: int
    gid: int
    env: dict[str, str] = field(default_factory=dict)

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 3600,
            memory: list[TreeMemory] | None = None) -> tuple[float, int, str]:
        """(seconds, peak RSS in KB of the largest process, stderr tail); raises on failure."""
        full_env = {**self.env, **(env or {})}
        drop = os.geteuid() == 0 and self.uid != 0

        def demote():
            if drop:
                os.setgroups([])
                os.setgid(self.gid)
                os.setuid(self.uid)

        start = time.monotonic()
        process = subprocess.Popen(argv, env=full_env, cwd=self.home, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, preexec_fn=demote)
        sampler = TreeMemory(process.pid) if memory is not None else None
        stderr = b""
        try:
            stderr = process.stderr.read()  # type: ignore[union-attr]
            if sampler is not None:  # sample while the process lives: a zombie has no memory to read
                os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
                sampler.stop()
                memory.append(sampler)  # type: ignore[union-attr]
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if process.returncode is None:
                process.kill()
        elapsed = time.monotonic() - start
        tail = stderr.decode(errors="replace")[-800:]
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])}... exited {process.returncode}: {tail}")
        return elapsed, usage.ru_maxrss, tail

    def clean(self, *paths: Path) -> None:
        for path in paths:
            if path.exists():
                subprocess.run(["chmod", "-R", "u+rwX", str(path)], capture_output=True)
                shutil.rmtree(path, ignore_errors=True)
                if path.exists():  # podman's vfs storage holds files owned by sub-ids: remove inside its userns
                    self.run(["podman", "unshare", "rm", "-rf", str(path)])


def make_runner(workdir: Path) -> Runner:
    if os.geteuid() == 0:
        account = pwd.getpwnam(TEST_USER)
        uid, gid = account.pw_uid, account.pw_gid
    else:
        uid, gid = os.getuid(), os.getgid()
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    for sub in ("tmp", "run", ".config", ".cache", ".local/share"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    (home / "run").chmod(0o700)
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", f"{uid}:{gid}", str(workdir)], check=True)
    python = "/opt/pyenroot/venv/bin/python" if Path("/opt/pyenroot/venv/bin/python").exists() else sys.executable
    wrapper = workdir / "pyenroot"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {python} -m pyenroot \"$@\"\n")
    wrapper.chmod(0o755)
    login = pwd.getpwuid(uid).pw_name
    env = {"HOME": str(home), "USER": login, "LOGNAME": login,
           "PATH": f"{workdir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8",
           "TMPDIR": str(home / "tmp"), "XDG_RUNTIME_DIR": str(home / "run")}
    return Runner(home, uid, gid, env)


class TreeMemory:
    """Samples, from /proc, the RSS of a process and of all its descendants while it runs.

    `own_kb` is the process's own high-water mark (VmHWM, read until it exits); `tree_kb` the largest sum of
    the RSS of the process and its descendants seen at one sample (every 20 ms)."""

    def __init__(self, pid: int):
        self.pid, self.own_kb, self.tree_kb = pid, 0, 0
        self._stop = __import__("threading").Event()
        self._thread = __import__("threading").Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def _status(pid: int, field: str) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.own_kb = max(self.own_kb, self._status(self.pid, "VmHWM"))
            self.tree_kb = max(self.tree_kb, sum(self._status(pid, "VmRSS") for pid in self._tree()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------- peers


@dataclass
class Peer:
    name: str
    tools: tuple[str, ...]

    def available(self) -> bool:
        return all(shutil.which(t) for t in self.tools)


def pyenroot_steps(r: Runner, image: str, out: Path, mode: str, jobs: int) -> list[list[str]]:
    if mode.startswith("cold"):
        r.clean(r.home / ".cache/enroot")
    elif mode.startswith("warm"):
        r.clean(r.home / ".cache/enroot/squashfs")  # blobs (and layer copies) stay; the image is built again
    out.unlink(missing_ok=True)
    copies = ["env", "PYENROOT_CACHE_LAYER_COPIES=yes"] if mode.endswith("-copies") else []
    return [[*copies, "pyenroot", "import", "-o", str(out), image]]


def copies_disk_use(r: Runner) -> tuple[int, int]:
    """(bytes of layer copies, bytes of blobs) in the test account's cache."""
    def total(directory: Path) -> int:
        return sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) if directory.is_dir() else 0

    cache = r.home / ".cache/enroot"
    return total(cache / "copies"), total(cache / "blobs/sha256")


def skopeo_steps(r: Runner, ref: str, out: Path, mode: str, jobs: int) -> list[list[str]]:
    cold = mode == "cold"
    oci, bundle = r.home / "skopeo-oci", r.home / "skopeo-bundle"
    if cold:
        r.clean(oci)
    r.clean(bundle)
    out.unlink(missing_ok=True)
    return [["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci}:bench"],
            ["umoci", "unpack", "--rootless", "--image", f"{oci}:bench", str(bundle)],
            ["mksquashfs", str(bundle / "rootfs"), str(out), "-comp", "lz4", "-noappend", "-all-root", "-no-progress",
             "-quiet", "-processors", str(jobs)]]


def charliecloud_steps(r: Runner, ref: str, out: Path, mode: str, jobs: int) -> list[list[str]]:
    cold = mode == "cold"
    storage = r.home / "ch-storage"
    if cold:
        r.clean(storage)
    out.unlink(missing_ok=True)
    return [["ch-image", "--storage", str(storage), "--no-cache", "--tls-no-verify", "pull", ref, "bench"],
            ["env", f"CH_IMAGE_STORAGE={storage}", "ch-convert", "-i", "ch-image", "-o", "squash", "bench", str(out)]]


def podman_steps(r: Runner, ref: str, out: Path, mode: str, jobs: int) -> list[list[str]]:
    cold = mode == "cold"
    root, runroot = r.home / "podman-root", Path(f"/tmp/pyb-run-{r.uid}")  # podman wants a short runroot
    if cold:
        r.clean(root, runroot)
    return [["podman", "--root", str(root), "--runroot", str(runroot), "pull", "--quiet", "--tls-verify=false",
             ref]]


PEERS = [
    (Peer("pyenroot", ()), pyenroot_steps),
    (Peer("skopeo+umoci+mksquashfs", ("skopeo", "umoci", "mksquashfs")), skopeo_steps),
    (Peer("charliecloud", ("ch-image", "ch-convert")), charliecloud_steps),
    (Peer("podman", ("podman",)), podman_steps),
]


def squash_baseline(r: Runner, blobs: Path, manifest: dict, jobs: int) -> tuple[float, int]:
    """tar2sqfs alone over the already merged tree (as one tar): the floor of any import to squashfs."""
    from pyenroot.content.model import Descriptor, LocalLayer
    from pyenroot.image.merge import Decompressor, write_merged

    merged = r.home / "merged.tar"
    layers = [LocalLayer(Descriptor(layer["mediaType"], layer["digest"], layer["size"]), blobs / layer["file"])
              for layer in manifest["layers"]]
    with open(merged, "wb") as sink:
        write_merged(layers, {}, sink, decompressor=Decompressor("pigz", jobs))
        os.fsync(sink.fileno())  # written back before tar2sqfs starts: the floor times tar2sqfs alone
    if os.geteuid() == 0:
        os.chown(merged, r.uid, r.gid)
    out = r.home / "baseline.sqsh"
    try:
        return measure(r, [["sh", "-c", f"exec tar2sqfs --quiet --force -c lz4 -j {jobs} {out} < {merged}"]])
    finally:
        merged.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def measure(r: Runner, steps: list[list[str]]) -> tuple[float, int]:
    total, peak = 0.0, 0
    for argv in steps:
        seconds, rss, _ = r.run(argv)
        total += seconds
        peak = max(peak, rss)
    return total, peak


# ------------------------------------------------------------------------------------------- report


def report(results: dict[tuple[str, str], list[tuple[float, int]]], failures: dict[str, str],
           disk: tuple[int, int] | None = None) -> str:
    def median(name: str, mode: str) -> float | None:
        runs = results.get((name, mode))
        return statistics.median(s for s, _ in runs) if runs else None

    base = {mode: median("pyenroot", mode) for mode in ("cold", "warm")}
    lines = ["| tool | cold (s) | warm (s) | cold / pyenroot | warm / pyenroot | peak RSS (MB) |",
             "|---|---|---|---|---|---|"]
    floor = results.get(("tar2sqfs of the merged tar (floor)", "warm"))
    if floor:
        seconds, rss = median("tar2sqfs of the merged tar (floor)", "warm") or 0.0, max(r for _, r in floor)
        ratio = f"{seconds / base['warm']:.2f}x" if base["warm"] else ""
        lines.append(f"| tar2sqfs of the merged tar (floor) | | {seconds:.1f} | | {ratio} | {rss / 1024:.0f} |")
    for peer, _ in PEERS:
        if peer.name in failures:
            lines.append(f"| {peer.name} | n/a | n/a | | | ({failures[peer.name]}) |")
            continue
        cells = [peer.name]
        for mode in ("cold", "warm"):
            value = median(peer.name, mode)
            cells.append(f"{value:.1f}" if value is not None else "n/a")
        for mode in ("cold", "warm"):
            value = median(peer.name, mode)
            cells.append(f"{value / base[mode]:.2f}x" if value and base[mode] else "")
        peaks = [rss for mode in ("cold", "warm") for _, rss in results.get((peer.name, mode), [])]
        cells.append(f"{max(peaks) / 1024:.0f}" if peaks else "")
        lines.append("| " + " | ".join(cells) + " |")
    warm, floor_seconds = base["warm"], median("tar2sqfs of the merged tar (floor)", "warm")
    if warm and floor_seconds:
        verdict = "met" if warm <= WARM_TARGET * floor_seconds else "missed"
        lines.append(f"| pyenroot warm rebuild / tar2sqfs alone on the merged content | | {warm:.1f} | | "
                     f"{warm / floor_seconds:.2f}x | (target <= {WARM_TARGET}x: {verdict}) |")
    cold_copies, warm_copies = median("pyenroot", "cold-copies"), median("pyenroot", "warm-copies")
    if warm_copies and floor_seconds:
        verdict = "met" if warm_copies <= WARM_TARGET * floor_seconds else "missed"
        lines.append(f"| pyenroot warm rebuild from zstd layer copies (PYENROOT_CACHE_LAYER_COPIES=yes) | | "
                     f"{warm_copies:.1f} | | {warm_copies / floor_seconds:.2f}x | "
                     f"(target <= {WARM_TARGET}x: {verdict}) |")
    if cold_copies and base["cold"]:
        lines.append(f"| pyenroot cold import writing the copies (PYENROOT_CACHE_LAYER_COPIES=yes) | "
                     f"{cold_copies:.1f} | | {cold_copies / base['cold']:.2f}x of cold | | |")
    skopeo = median("skopeo+umoci+mksquashfs", "cold")
    for label, cold in (("pyenroot cold", base["cold"]), ("pyenroot cold writing the copies", cold_copies)):
        if cold and skopeo:
            verdict = "met" if cold <= COLD_TARGET * skopeo else "missed"
            lines.append(f"| {label} / skopeo+umoci+mksquashfs cold | {cold / skopeo:.2f}x | | | | "
                         f"(target <= {COLD_TARGET}x: {verdict}) |")
    if disk:
        copies, blobs = disk
        lines.append(f"| layer copies on disk | | | | | {copies / 1e6:.0f} MB, +{100 * copies / max(blobs, 1):.0f}% "
                     f"over the blobs' {blobs / 1e6:.0f} MB |")
    cached = median("pyenroot", "cached")
    if cached is not None:
        verdict = "met" if cached <= CACHED_TARGET else "missed"
        lines.append(f"| pyenroot, image built before (cached) | | {cached:.2f} | | "
                     f"{cached / base['cold']:.3f}x of cold | (target <= {CACHED_TARGET} s: {verdict}) |")
    return "\n".join(lines)


def huge(runner: Runner, image_uri: str, ref: str, out: Path, jobs: int, failures: dict[str, str]) -> list[str]:
    """The 1M-file image, cold: pyenroot (its own process and its tree) against the skopeo pipeline."""
    lines = []
    runner.clean(runner.home / ".cache/enroot")
    out.unlink(missing_ok=True)
    memory: list[TreeMemory] = []
    seconds, rss, _ = runner.run(["pyenroot", "import", "-o", str(out), image_uri], memory=memory)
    own, tree = memory[0].own_kb / 1024, memory[0].tree_kb / 1024
    lines.append(f"pyenroot import, cold: {seconds:.1f}s; peak RSS: pyenroot process {own:.0f} MB, "
                 f"largest process {rss / 1024:.0f} MB (tar2sqfs when larger), whole tree {tree:.0f} MB")
    met = "met" if own <= 100 else "missed"
    lines.append(f"target pyenroot process <= 100 MB at 1M files: {met} ({own:.0f} MB)")
    peer = "skopeo+umoci+mksquashfs"
    if peer in failures:
        lines.append(f"{peer}: {failures[peer]}")
        return lines
    try:
        peer_seconds, peer_rss = measure(runner, skopeo_steps(runner, ref, out, True, jobs))
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        lines.append(f"{peer}: failed: {str(exc).splitlines()[0][:120]}")
        return lines
    ratio = seconds / peer_seconds
    lines.append(f"{peer}, cold: {peer_seconds:.1f}s, peak RSS {peer_rss / 1024:.0f} MB (largest process)")
    lines.append(f"target cold import <= {COLD_TARGET}x {peer}: {'met' if ratio <= COLD_TARGET else 'missed'} "
                 f"({ratio:.2f}x)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a small image, for a quick check")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3, 1 with --small)")
    parser.add_argument("--only", action="append", help="run only these tools (repeatable)")
    parser.add_argument("--huge", action="store_true", help="1 million files, cold only: peak RSS and time")
    parser.add_argument("--huge-layers", type=int, default=4, metavar="N",
                        help="with --huge: the million files in N layers (default 4; 1 is a common shape too)")
    args = parser.parse_args()
    shape = huge_shape(args.huge_layers) if args.huge else SMALL if args.small else FULL
    repeat = args.repeat or (1 if args.small else 3)
    jobs = len(os.sched_getaffinity(0))

    print(f"building image {shape.label} (cached in {CACHE})...", flush=True)
    blobs = build_blobs(shape)
    manifest = json.loads((blobs / "manifest.json").read_text())
    compressed = sum(layer["size"] for layer in manifest["layers"])
    raw = manifest["raw_size"]
    print(f"{len(manifest['layers'])} gzip layers, {compressed / 1e9:.2f} GB compressed, {raw / 1e9:.2f} GB of tar",
          flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="pyenroot-bench-", dir=os.environ.get("PYENROOT_BENCH_TMP", "/var/tmp")))
    workdir.chmod(0o755)
    # TLS with a throw-away CA: charliecloud speaks HTTPS only; the other peers are told not to verify.
    tls = make_tls(workdir / "tls")
    registry = LocalRegistry(workdir / "registry", tls=tls).start()
    results: dict[tuple[str, str], list[tuple[float, int]]] = {}
    failures: dict[str, str] = {}
    disk: tuple[int, int] | None = None
    try:
        push(blobs, registry, "bench/big", "v1")
        runner = make_runner(workdir / "user")
        runner.env["PYENROOT_CA_BUNDLE"] = str(tls.ca_cert)
        ref = f"{registry.host}/bench/big:v1"
        image_uri = f"docker://{registry.host}#bench/big:v1"
        out = runner.home / "out.sqsh"
        for peer, _ in PEERS:
            if not peer.available():
                failures[peer.name] = "not installed"
            elif args.only and peer.name not in args.only:
                failures[peer.name] = "skipped"
        if args.huge:
            lines = huge(runner, image_uri, ref, out, jobs, failures)
            print("\n".join(lines))
            return 0
        for rep in range(repeat):
            for peer, steps in PEERS:
                if peer.name in failures:
                    continue
                target = image_uri if peer.name == "pyenroot" else ref
                for mode in PYENROOT_MODES if peer.name == "pyenroot" else ("cold", "warm"):
                    try:
                        seconds, rss = measure(runner, steps(runner, target, out, mode, jobs))
                    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                        failures[peer.name] = str(exc).splitlines()[0][:120]
                        print(f"  {peer.name}: failed: {exc}", flush=True)
                        break
                    results.setdefault((peer.name, mode), []).append((seconds, rss))
                    print(f"  run {rep + 1}/{repeat} {peer.name} {mode}: {seconds:.1f}s, peak RSS "
                          f"{rss / 1024:.0f} MB", flush=True)
                    if peer.name == "pyenroot" and mode == "cold-copies":
                        disk = copies_disk_use(runner)
                if peer.name == "pyenroot" and peer.name not in failures:
                    # The floor in every repetition, next to the warm rebuild it is compared with (load varies).
                    seconds, rss = squash_baseline(runner, blobs, manifest, jobs)
                    results.setdefault(("tar2sqfs of the merged tar (floor)", "warm"), []).append((seconds, rss))
                    print(f"  run {rep + 1}/{repeat} tar2sqfs alone over the merged tar: {seconds:.1f}s", flush=True)
        if not args.only or "pyenroot" in args.only:
            out.unlink(missing_ok=True)
            runner.clean(runner.home / ".cache/enroot")
            seconds, _, tail = runner.run(["pyenroot", "-v", "import", "-o", str(out), image_uri])
            phases = [line for line in tail.splitlines() if "time:" in line]
            print(f"  pyenroot -v, cold: {phases[-1] if phases else tail}", flush=True)
            out.unlink(missing_ok=True)
            runner.clean(runner.home / ".cache/enroot/squashfs")
            seconds, _, tail = runner.run(["pyenroot", "-v", "import", "-o", str(out), image_uri])
            phases = [line for line in tail.splitlines() if "time:" in line]
            print(f"  pyenroot -v, warm: {phases[-1] if phases else tail}", flush=True)
        for peer, _ in PEERS:
            if peer.name == "podman":
                runner.clean(runner.home / "podman-root", Path(f"/tmp/pyb-run-{runner.uid}"))
    finally:
        registry.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"image: {len(manifest['layers'])} gzip layers, {compressed / 1e9:.2f} GB compressed, {raw / 1e9:.2f} GB "
          f"uncompressed, {shape.layers * (shape.files_per_layer + shape.big_files_per_layer)} files; {jobs} CPUs; "
          f"medians of {repeat}")
    print(report(results, failures, disk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
