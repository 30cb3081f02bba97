"""``table``: regenerate summary and paired-comparison tables from run folders."""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.base import Subcommand
from tasks.errors import BenchmarkError


class Table(Subcommand):
    name = "table"
    help = "regenerate summary and paired-comparison tables from run folders"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dirs", nargs="+", help="run folders (each holds rows.jsonl)")
        parser.add_argument("--baseline", default="image", help="modality setting compared against (default: image)")
        parser.add_argument("--out", help="folder for comparison.csv/md (default: the first run folder)")

    def run(self, args: argparse.Namespace) -> int:
        from benchmark.results import format_table, write_comparison, write_summary

        dirs = [Path(d) for d in args.run_dirs]
        for d in dirs:
            if not (d / "rows.jsonl").exists():
                raise BenchmarkError(f"{d} holds no rows.jsonl: give run folders written by `run_benchmark.py run`")
            print(format_table(write_summary(d)))
        comparison = write_comparison(dirs, Path(args.out) if args.out else dirs[0], args.baseline)
        if comparison.empty:
            print(f"(no {args.baseline}-only method to compare against)")
        else:
            print("\npaired differences vs " + args.baseline + " (percentage points, same episodes):")
            print(comparison[["learner", "fusion", "modalities", "n_way", "n_shot", "accuracy", "difference",
                              "difference_ci95", "p_value"]].to_string(index=False))
        return 0
