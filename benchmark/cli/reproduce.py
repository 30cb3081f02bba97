"""``reproduce``: reproduce a published number (protocols in ``benchmark/configs``)."""
from __future__ import annotations

import argparse

from benchmark.cli.base import Subcommand
from tasks.errors import BenchmarkError

EXAMPLES = """\
examples:
  python run_benchmark.py reproduce --list
  python run_benchmark.py reproduce omniglot_protonet_5w1s --data-root ../shared/data --threads 1
  python run_benchmark.py reproduce omniglot_protonet_5w1s_short --data-root ../shared/data --eval-only
"""


class Reproduce(Subcommand):
    name = "reproduce"
    help = "reproduce a published number (protocols in benchmark/configs)"
    epilog = EXAMPLES

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("name", nargs="?", help="protocol name (see --list)")
        add("--list", action="store_true", help="list the protocols with published and committed numbers")
        add("--data-root", help="folder holding the dataset in its official layout")
        add("--eval-only", action="store_true",
            help="evaluate the committed checkpoint results/checkpoints/NAME.pt instead of training")
        add("--test-episodes", type=int,
            help="with --eval-only: only the first N episodes of the fixed manifest (a quick check)")
        add("--out", default="runs/reproduce", help="run folder (default: runs/reproduce)")
        add("--device", default="cpu", help="cpu, cuda, cuda:N")
        add("--threads", type=int, default=0, help="torch CPU threads")

    def run(self, args: argparse.Namespace) -> int:
        from benchmark import reproduce

        if args.list or not args.name:
            print(reproduce.list_protocols())
            return 0
        protocol = reproduce.load_protocol(args.name)
        if args.test_episodes is not None and not args.eval_only:
            raise BenchmarkError("--test-episodes only applies with --eval-only (training uses the protocol's manifest)")
        if args.eval_only:
            outcome = reproduce.evaluate_checkpoint(protocol, args.data_root, args.out, args.threads, args.device,
                                                    args.test_episodes)
            match = reproduce.matches_committed(outcome)
            print(outcome.describe())
            print("committed episodes reproduced exactly: "
                  + {True: "yes", False: "NO", None: "(nothing committed)"}[match])
            if outcome.full_manifest:
                reproduce.record_outcome(outcome, data_root=args.data_root)
            return 0 if match is not False else 1
        outcome = reproduce.train_protocol(protocol, args.data_root, args.out, args.threads, args.device)
        print(outcome.describe())
        print(f"recorded in {reproduce.RESULTS_DIR / 'reproduced.csv'} and README.md; "
              f"checkpoint results/checkpoints/{protocol.name}.pt")
        return 0
