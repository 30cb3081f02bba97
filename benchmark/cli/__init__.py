"""Command line: ``python run_benchmark.py [run] ...``, ``ls``, ``table``, ``report``, ``reproduce``,
``evaluate``, ``upgrade-checkpoint``, ``perf``, ``sweep``, ``select``
(also ``python -m benchmark`` and the ``mmfs-bench`` console script).

One module per subcommand, each a :class:`~benchmark.cli.base.Subcommand`; to add one, write
its module and add it to :data:`COMMANDS`.
"""
from __future__ import annotations

import argparse

from benchmark.cli import base
from benchmark.cli.evaluate import Evaluate, UpgradeCheckpoint
from benchmark.cli.ls import Ls
from benchmark.cli.perf import Perf
from benchmark.cli.report import Report
from benchmark.cli.reproduce import Reproduce
from benchmark.cli.run import Run, config_from_args
from benchmark.cli.select import Select
from benchmark.cli.sweep import Sweep
from benchmark.cli.table import Table

COMMANDS: list[base.Subcommand] = [Run(), Ls(), Table(), Report(), Reproduce(), Evaluate(), UpgradeCheckpoint(),
                                   Perf(), Sweep(), Select()]
DEFAULT = COMMANDS[0]  # `python run_benchmark.py --shots 1` is `run --shots 1`

__all__ = ["COMMANDS", "build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    return base.build_parser(COMMANDS, DEFAULT,
                             description="Few-shot multimodal (image + text) meta-learning benchmark.")


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    return base.main(build_parser(), COMMANDS, DEFAULT, argv)
