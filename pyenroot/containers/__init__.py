"""Container storage under ENROOT_DATA_PATH, one job per module: `names` (name -> directory, list), `work`
(hidden locked work entries), `tree` (removing a tree), `create`, `remove`, `export`, `discovery` (running
containers through /proc).

Create (unsquashfs), remove and export (mksquashfs) never leave half a result visible: work happens in a
hidden, locked entry of the data directory that `list` ignores and is renamed into place at the end.
"""
