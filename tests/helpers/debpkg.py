"""A tiny Debian package, built on the host with dpkg-deb, that makes dpkg rename directories of the image.

Installed into the Debian test image it needs no network, and it exercises the two renames a package
manager does that an overlay of the image refuses (EXDEV): moving aside a directory that comes from the image
(`/usr/local/games`, empty and owned by no package in Debian's minbase, becomes a file: dpkg renames the old
directory to `.dpkg-tmp` first), and putting a new directory in place under a directory of the image
(`/usr/share/doc/NAME`, extracted as `NAME.dpkg-new` and then renamed, as for every package).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PACKAGE = "pyenroot-dirswap"
REPLACED_DIRECTORY = "/usr/local/games"
REPLACEMENT_TEXT = "a file where the image had a directory\n"
NEW_DIRECTORY_FILE = f"/usr/share/doc/{PACKAGE}/README"

_CONTROL = f"""\
Package: {PACKAGE}
Version: 1.0
Architecture: all
Maintainer: pyenroot tests <tests@pyenroot.invalid>
Description: replaces a directory of the image with a file
"""


def directory_swap_deb(workdir: Path) -> Path:
    """Build the package below `workdir`; returns the .deb (readable by everyone)."""
    tree = workdir / f"{PACKAGE}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(_CONTROL)
    for path, text in ((REPLACED_DIRECTORY, REPLACEMENT_TEXT), (NEW_DIRECTORY_FILE, "readme\n")):
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    deb = workdir / f"{PACKAGE}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    deb.chmod(0o644)
    return deb
