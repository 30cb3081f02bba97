"""``perf``: the speed benchmark (:mod:`benchmark.perf`), imported only when this command is parsed."""
from __future__ import annotations

import argparse

from benchmark.cli.base import Subcommand


class Perf(Subcommand):
    name = "perf"
    help = "speed benchmark: throughput, memory, ratios (JSON)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from benchmark.perf.suite import add_arguments

        add_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from benchmark.perf.suite import main_from_args

        return main_from_args(args)
