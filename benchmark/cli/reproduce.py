"""``reproduce``: reproduce a published number (protocols in ``benchmark/configs``)."""
from __future__ import annotations

import argparse

from benchmark.cli.base import Subcommand
from tasks.errors import BenchmarkError

EXAMPLES = """\
examples:
  python run_benchmark.py reproduce --list
  python run_benchmark.py reproduce omniglot_protonet_1shot --data-root ../shared/data --threads 2
  python run_benchmark.py reproduce omniglot_protonet_1shot --data-root ../shared/data --eval-only
  python run_benchmark.py reproduce omniglot_protonet_1shot --data-root ../shared/data --eval-only --update-check
  python run_benchmark.py reproduce omniglot_maml_5w1s --data-root ../shared/data --interim
  python run_benchmark.py reproduce omniglot_protonet_1shot --data-root ../shared/data --upgrade-checkpoint
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
            help="re-evaluate results/checkpoints/NAME.pt against its committed per-episode accuracies; the "
                 "check goes to OUT/checks/NAME.json (rows and the committed check unchanged)")
        add("--update-check", action="store_true",
            help="with --eval-only: write the committed check results/checks/NAME.json instead")
        add("--interim", action="store_true",
            help="record rows for an unfinished training's latest checkpoint (marked interim, not comparable; "
                 "the training continues with the same command without --interim)")
        add("--upgrade-checkpoint", action="store_true",
            help="rewrite a bare results/checkpoints/NAME.pt as a self-describing model file (same tensors; "
                 "the rows keep the old sha256 and record the new one)")
        add("--test-episodes", type=int,
            help="with --eval-only: only the first N episodes of the fixed manifest (a quick check)")
        add("--out", help="run folder (default: results/training; runs/reproduce with --eval-only, which also "
                          "holds its check)")
        add("--device", default="cpu", help="cpu, cuda, cuda:N")
        add("--threads", type=int, default=0, help="torch CPU threads")

    def run(self, args: argparse.Namespace) -> int:
        from benchmark import reproduce, reproduce_eval, reproduce_train

        results = reproduce.RESULTS_DIR
        if args.list or not args.name:
            print(reproduce.list_protocols(results_dir=results))
            return 0
        protocol = reproduce.load_protocol(args.name, results_dir=results)
        if args.update_check and not args.eval_only:
            raise BenchmarkError("--update-check only applies with --eval-only (it replaces the committed check "
                                 "results/checks/NAME.json)")
        if args.test_episodes is not None and not args.eval_only:
            raise BenchmarkError("--test-episodes only applies with --eval-only "
                                 "(training uses the protocol's manifest)")
        if args.interim and args.eval_only:
            raise BenchmarkError("--interim records rows from the training checkpoint and --eval-only checks the "
                                 "committed model: use one of them")
        if args.upgrade_checkpoint:
            if args.interim or args.eval_only:
                raise BenchmarkError("--upgrade-checkpoint rewrites the committed model only: use it alone")
            from benchmark.reproduce_upgrade import upgrade_committed, verify_checkpoint

            path = upgrade_committed(protocol, args.data_root, results)
            lineage = verify_checkpoint(protocol, results)
            source = lineage["upgraded_from"] or {}
            print(f"{reproduce.checkpoint_path(protocol, results)} "
                  + ("already describes itself: nothing to upgrade" if path is None else "now describes itself")
                  + (f"; upgraded from sha256 {source['sha256']} (commit {source.get('commit')}, tensors "
                     f"{'checked equal' if lineage['weights_checked'] else 'equal when written'}); "
                     f"its sha256 {lineage['sha256']}, {lineage['rows']} row(s) of reproduced.csv" if source else ""))
            return 0
        if args.interim:
            outcomes = reproduce_train.record_interim(protocol, args.data_root, args.out, args.threads, args.device,
                                                      results)
            print("\n\n".join(o.describe() for o in outcomes))
            print(f"recorded as interim rows in {results / 'reproduced.csv'} and README.md; "
                  f"{reproduce.checkpoint_path(protocol, results)}")
            return 0
        if args.eval_only:
            outcomes, path, equal = reproduce_eval.run_check(
                protocol, args.data_root, args.out or "runs/reproduce", args.threads, args.device, args.test_episodes,
                results, args.update_check)
            print("\n\n".join(o.describe() for o in outcomes))
            kept = "" if args.update_check else (f"; the committed check {results / 'checks' / path.name} is "
                                                 "unchanged (--update-check replaces it)")
            print(f"check written to {path} (the rows of reproduced.csv are unchanged{kept}); committed episodes "
                  f"reproduced exactly: {'yes' if equal else 'NO'}")
            return 0 if equal else 1
        outcomes = reproduce_train.train_protocol(protocol, args.data_root, args.out, args.threads, args.device,
                                                  results)
        print("\n\n".join(o.describe() for o in outcomes))
        print(f"recorded in {results / 'reproduced.csv'} and README.md; {reproduce.checkpoint_path(protocol, results)}")
        return 0
