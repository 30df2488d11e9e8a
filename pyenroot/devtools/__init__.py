"""Tools for trying pyenroot on one machine and for its tests: a loopback registry, an image builder that
writes and pushes images byte by byte, sample root filesystems, and (in pyenroot.devtools.devcluster) a local
Slurm cluster. Nothing here is needed on a production cluster."""
