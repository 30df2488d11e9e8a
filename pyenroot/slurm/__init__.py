"""Slurm glue: the Python side of the SPANK plugin, cluster state queries, and a local dev cluster."""
