"""Allows `python -m pyenroot`."""

import sys

from pyenroot.cli import main

sys.exit(main())
