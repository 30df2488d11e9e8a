"""What registries and image builders share, below both: the content-addressed blob cache (`blobs.py`) and the
values that describe an image's content (`model.py`: descriptors, resolved images, local layers).

`registry/` fetches into the blob cache; `image/` reads from it. Neither imports the other for these.
"""
