"""``table``: regenerate summaries and keyed comparison tables from run folders."""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.base import Subcommand
from tasks.errors import BenchmarkError


class Table(Subcommand):
    name = "table"
    help = "regenerate summary and paired-comparison tables from run folders (never mixing runs)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dirs", nargs="+", help="run folders (each holds rows.jsonl, or rows.jsonl.gz as kept in results/)")
        parser.add_argument("--baseline", default="image", help="what each method is compared against: a modality setting, each learner against its own "
                                 "(default: image), or LEARNER[SETTING], every method against that one (protonet[image])")
        parser.add_argument("--out", help="folder for the tables, created if missing (default: the run folder; "
                                          "required with several runs)")
        parser.add_argument("--metric", default="accuracy",
                            help="metric of the comparison tables: accuracy (default), nll, ece (benchmark/metrics.py)")
        parser.add_argument("--allow-damaged", action="store_true",
                            help="write the tables even from a run whose rows file is damaged or incomplete "
                                 "(refused by default: rerunning that run recomputes what is missing)")

    def run(self, args: argparse.Namespace) -> int:
        from benchmark.rowcheck import check_rows
        from benchmark.tables import require_rows
        from benchmark.tablewrite import format_table, wide_text, write_summary, write_tables

        run_dirs = [Path(d) for d in args.run_dirs]
        if len(run_dirs) > 1 and not args.out:
            raise BenchmarkError("a table over several runs needs --out DIR (a folder of its own, so that no run's "
                                 "own comparison files are replaced)")
        for run_dir in run_dirs:
            require_rows(run_dir)  # names a folder without rows.jsonl before anything is written
        damaged = [check.describe() for check in map(check_rows, run_dirs) if not check.ok]
        if damaged and not args.allow_damaged:
            raise BenchmarkError(
                "\n".join(damaged) + "\nNothing was written (the run's summary files are kept). Rerun the run (the "
                "same `run_benchmark.py run` command; its config is in run.json) to recompute what is missing, or "
                "pass --allow-damaged to write tables from the rows that are there")
        for run_dir in run_dirs:
            print(f"{run_dir}:\n{format_table(write_summary(run_dir), args.metric)}\n")
        out = Path(args.out) if args.out else run_dirs[0]
        tables = write_tables(run_dirs, out, args.baseline, args.metric, warn=False)  # write_summary has warned
        if tables.comparison.empty:
            print(f"(no {args.baseline}-only method to compare against)")
        print(f"{args.metric} and paired differences vs {args.baseline} (same episodes; over seeds where given):")
        print(wide_text(tables.wide, args.metric, args.baseline).to_string(index=False))
        print(f"\ntables: {out}/comparison_wide.md (comparison.csv, comparison_wide.csv"
              f"{', over_seeds.csv' if (out / 'over_seeds.csv').exists() else ''})")
        return 0
