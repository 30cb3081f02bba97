"""``python -m benchmark.perf``: the speed benchmark on its own."""
import sys

from benchmark.perf.suite import main

sys.exit(main())
