"""``python -m benchmark``: the command line (see :mod:`benchmark.cli`)."""
import sys

from benchmark.cli import main

sys.exit(main())
