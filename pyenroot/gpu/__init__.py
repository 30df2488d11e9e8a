"""NVIDIA GPUs in containers: driver discovery, device/library selection, and the standard hook."""
