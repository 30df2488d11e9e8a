"""Bundles: a squashfs image and the pyenroot that starts it in one self-extracting, self-starting file.

`build` makes one (the `bundle` verb), `runner` is what runs inside one, `model` what both sides share.
"""
