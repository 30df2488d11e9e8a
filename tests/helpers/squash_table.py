"""The squashfs options table of docs/import.md, read as the option invocations it documents, with sample
values that the real tools accept (for the tests that run each documented option)."""

from __future__ import annotations

import re
from pathlib import Path

IMPORT_DOC = Path(__file__).resolve().parents[2] / "docs" / "import.md"
PLACEHOLDERS = {"SIZE": "128K", "N": "2", "A": "lzo1x_1", "S": "filtered", "F": "x86", "D": "50%", "T": "0",
                "M": "0755", "U": "0"}
# The compressor an -X option belongs to, and a value that compressor accepts.
COMPRESSOR_OPTIONS = {
    "-Xcompression-level": ("zstd", "3"), "-Xhc": ("lz4", None), "-Xwindow-size": ("gzip", "12"),
    "-Xalgorithm": ("lzo", "lzo1x_1"), "-Xstrategy": ("gzip", "filtered,huffman_only"),
    "-Xbcj": ("xz", "x86"), "-Xdict-size": ("xz", "50%"), "-Xlc": ("xz", "1"), "-Xlp": ("xz", "1"),
    "-Xpb": ("xz", "1"), "-Xextreme": ("xz", None),
}


def table_cells() -> list[str]:
    """The first cell of each row of the table under `### Squashfs options`."""
    text = IMPORT_DOC.read_text()
    section = text.split("### Squashfs options", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [re.split(r"(?<!\\)\|", row)[1] for row in rows]


def documented_invocations() -> list[str]:
    """Each documented option as ENROOT_SQUASH_OPTIONS text that should work: `-comp zstd -Xcompression-level 3`."""
    result: list[str] = []
    for cell in table_cells():
        for span in re.findall(r"`([^`]+)`", cell):
            words = span.replace("\\|", "|").split()
            for index, word in enumerate(words):
                if not word.startswith("-"):
                    continue
                following = words[index + 1] if index + 1 < len(words) else ""
                if word == "-comp":
                    result += [f"-comp {name}" for name in following.split("|")]
                    continue
                compressor, sample = COMPRESSOR_OPTIONS.get(word, ("lz4", None))
                if sample is None and following in PLACEHOLDERS:
                    sample = PLACEHOLDERS[following]
                result.append(f"-comp {compressor} {word}" + (f" {sample}" if sample else ""))
    return result
