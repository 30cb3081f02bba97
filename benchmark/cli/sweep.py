"""``sweep``: run a sweep file (datasets x methods x shots x seeds), cell by cell or on Ray."""
from __future__ import annotations

import argparse

from benchmark.cli.base import Subcommand

EXAMPLES = """\
examples:
  python run_benchmark.py sweep my_sweep.yaml                          # cells in turn, in this process
  python run_benchmark.py sweep my_sweep.yaml --executor ray           # a local Ray instance, one task per cell
  python run_benchmark.py sweep my_sweep.yaml --executor ray --address auto   # a running cluster (ray start)

Rerunning the same command skips finished cells and resumes the others. The file format and
the cluster set-up: docs/scaling.md.
"""


class Sweep(Subcommand):
    name = "sweep"
    help = "run a sweep file (datasets x methods x shots x seeds) in turn or on Ray"
    epilog = EXAMPLES

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", help="sweep file (YAML): datasets x methods x shots x seeds")
        parser.add_argument("--executor", default="local", choices=("local", "ray"),
                            help="local: cells in turn in this process (default); ray: one Ray task per cell")
        parser.add_argument("--address", help="with --executor ray: a running cluster (auto or HOST:PORT); "
                                              "default: a local Ray instance")
        parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
        parser.add_argument("--out", help="sweep folder (default: the file's `out`, else runs/<file name>)")
        parser.add_argument("--merge-every-s", type=float, default=600.0,
                            help="merge the finished cells' rows and tables at most this often while the sweep "
                                 "runs (always at the end; default 600)")

    def run(self, args: argparse.Namespace) -> int:
        """Exit code 1 when a cell failed (the others are kept), else 0."""
        from benchmark.executors import make_executor
        from benchmark.results import format_table, read_rows
        from benchmark.sweep import describe, failed_cells, load_sweep, run_sweep, summarize_by_seed

        sweep = load_sweep(args.file, args.out)
        status = run_sweep(sweep, make_executor(args.executor, args.address, args.num_cpus), args.merge_every_s)
        table = summarize_by_seed(read_rows(sweep.out / "rows.jsonl"))
        if not table.empty:
            print(format_table(table.assign(learner=[f"{a} s{b}" for a, b in zip(table["learner"], table["seed"])])))
        for line in describe(status):
            print(line)
        print(f"\nsweep: {sweep.out}/summary.md  (rows.jsonl, comparison.md, sweep.json; one run folder per cell)")
        return 1 if failed_cells(status) else 0
