"""``python -m kseg``: the ``kseg`` command (:mod:`kseg.cli`) without its console script."""

import sys

from kseg.cli import main

sys.exit(main())
