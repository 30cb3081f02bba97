"""``report``: figures, an offline HTML page, LaTeX and CSV tables from run folders."""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.base import Subcommand

EXAMPLES = """\
examples:
  python run_benchmark.py report runs/shapes-seed0-5b865227e7 --out report/
  python run_benchmark.py report results/fusion_comparison/shapes-seed0-* --out /tmp/fusion --reproduced
  python run_benchmark.py report runs/shapes-seed0-* runs/shapes-seed1-* --out report/ --metric ece

Open DIR/index.html in a browser (it works offline); table.tex needs \\usepackage{booktabs}.
"""


class Report(Subcommand):
    name = "report"
    help = "figures, an offline HTML page, LaTeX and CSV tables from run folders"
    epilog = EXAMPLES

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dirs", nargs="+", help="run folders (each holds rows.jsonl and run.json)")
        parser.add_argument("--out", required=True, help="folder for the report (created if missing)")
        parser.add_argument("--baseline", default="image", help="what each method is compared against: a modality setting, each learner against its own "
                                 "(default: image), or LEARNER[SETTING], every method against that one (protonet[image])")
        parser.add_argument("--metric", default="accuracy",
                            help="metric of the tables and figures: accuracy (default), nll, ece")
        parser.add_argument("--reproduced", action="store_true",
                            help="add published against reproduced numbers from results/reproduced.csv")

    def run(self, args: argparse.Namespace) -> int:
        from benchmark.report import build_report

        out = Path(args.out)
        figures = build_report([Path(d) for d in args.run_dirs], out, args.baseline, args.metric, args.reproduced)
        print(f"report: {out / 'index.html'} ({len(figures)} figures; table.tex, table.csv)")
        return 0
