"""``table``: regenerate summaries and keyed comparison tables from run folders."""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.base import Subcommand


class Table(Subcommand):
    name = "table"
    help = "regenerate summary and paired-comparison tables from run folders (never mixing runs)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dirs", nargs="+", help="run folders (each holds rows.jsonl)")
        parser.add_argument("--baseline", default="image", help="modality setting compared against (default: image)")
        parser.add_argument("--out", help="folder for the tables, created if missing (default: the run folder; "
                                          "required with several runs)")
        parser.add_argument("--metric", default="accuracy",
                            help="metric of the comparison tables: accuracy (default), nll, ece (benchmark/metrics.py)")

    def run(self, args: argparse.Namespace) -> int:
        from benchmark.tablewrite import print_tables

        return print_tables([Path(d) for d in args.run_dirs], args.out, args.baseline, args.metric)
