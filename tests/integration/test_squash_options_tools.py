"""Every option of the squashfs options table in docs/import.md, translated and run by the real tool
(tar2sqfs, or mksquashfs for the options only it has): the image it builds holds the file."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from pyenroot import squashfs
from pyenroot.image import squash
from tests.helpers.squash_table import documented_invocations


def small_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = b"hello squashfs\n" * 100
        info = tarfile.TarInfo("etc/hello")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("text", documented_invocations())
def test_documented_option_builds_an_image(tmp_path: Path, text: str):
    plan = squash.translate_options(text)
    out = tmp_path / "out.sqsh"
    if plan.use_mksquashfs:
        source = tmp_path / "tree"
        (source / "etc").mkdir(parents=True)
        (source / "etc/hello").write_bytes(b"hello squashfs\n" * 100)
        squash.run_mksquashfs(plan, source, out, 2)
    else:
        builder = squash.Tar2Sqfs(plan, out, 2)
        builder.stdin.write(small_tar())
        builder.finish()
    assert squashfs.compressor_of(out) == plan.compressor
    listing = subprocess.run(["unsquashfs", "-l", str(out)], capture_output=True, text=True)
    assert "squashfs-root/etc/hello" in listing.stdout, (text, listing.stderr)
