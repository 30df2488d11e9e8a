"""pyenroot: unprivileged containers for HPC clusters, compatible with enroot and pyxis."""

__version__ = "0.1.0"
