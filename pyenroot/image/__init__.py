"""Turning images into root filesystems: blob cache, layer merge, squashfs building, import orchestration."""
