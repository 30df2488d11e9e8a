"""The host's MPI in containers, on request (the 60-mpi hook): site file, ABI check, mounts."""
