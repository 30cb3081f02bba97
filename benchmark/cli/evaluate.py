"""``evaluate`` and ``upgrade-checkpoint``: a trained checkpoint on sampled or given episodes, and
a self-describing copy of an older bare checkpoint (the work is done by :mod:`benchmark.api`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.base import Subcommand
from tasks.errors import BenchmarkError

EXAMPLES = """\
examples:
  python run_benchmark.py evaluate --checkpoint runs/<run>/checkpoints/protonet-image-none.pt --out runs/eval
  python run_benchmark.py evaluate --checkpoint model.pt --episodes episodes.json --out runs/eval
  python run_benchmark.py evaluate --checkpoint results/checkpoints/omniglot_protonet_5w1s_2k.pt \\
      --data-root ../shared/data --ways 20 --shots 1 --test-episodes 100 --out runs/eval
  python run_benchmark.py evaluate --checkpoint old.pt --config benchmark/configs/omniglot_protonet_5w1s_2k.yaml \\
      --data-root ../shared/data --out runs/eval                  # an older bare state dict

Episode files (JSON or CSV) are described in docs/python-api.md.
"""


class Evaluate(Subcommand):
    name = "evaluate"
    help = "evaluate a checkpoint on sampled test episodes or on an episode file (writes predictions.csv)"
    epilog = EXAMPLES

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--checkpoint", required=True, help="model file written by a run (or an older state dict)")
        add("--episodes", help="JSON or CSV episode file: run exactly these episodes")
        add("--dataset", help="dataset to sample episodes from (default: the checkpoint's)")
        add("--data-root", help="folder holding the dataset")
        add("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
            help="dataset option (value parsed as YAML), e.g. split=vinyals")
        add("--ways", type=_ints, help="test ways (default: the checkpoint's config)")
        add("--shots", type=_ints, help="test shots (default: the checkpoint's config)")
        add("--queries", type=int, help="test queries per class")
        add("--test-episodes", type=int, help="episodes per way/shot")
        add("--seed", type=int, help="seed of the sampled episodes (default: the checkpoint's run)")
        _bare_arguments(parser)
        add("--out", required=True, help="output folder (an eval-<checkpoint>-<hash> subfolder)")
        add("--device", default="cpu", help="cpu, cuda, cuda:N")
        add("--threads", type=int, default=0, help="torch CPU threads")

    def run(self, args: argparse.Namespace) -> int:
        return cmd_evaluate(args)


class UpgradeCheckpoint(Subcommand):
    name = "upgrade-checkpoint"
    help = "write a self-describing copy of an older bare checkpoint"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("checkpoint", help="the bare state dict")
        _bare_arguments(parser)
        parser.add_argument("--data-root", help="folder holding the config's dataset")
        parser.add_argument("--out", required=True, help="the new model file")

    def run(self, args: argparse.Namespace) -> int:
        return cmd_upgrade(args)


def _bare_arguments(parser) -> None:
    parser.add_argument("--config", help="for an older bare checkpoint: the experiment YAML it was trained with")
    parser.add_argument("--method", help="for a bare checkpoint whose config names several methods, "
                                         "e.g. protonet:image")


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}") from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch
    import yaml

    from benchmark.api import evaluate
    from benchmark.tables import load_rows, summarize
    from benchmark.tablewrite import format_table
    from benchmark.savedmodel import load_learner

    if args.threads:
        torch.set_num_threads(args.threads)
    options = {}
    for item in args.dataset_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise BenchmarkError(f"--dataset-option {item!r}: expected KEY=VALUE, e.g. split=vinyals")
        options[key] = yaml.safe_load(value)
    learner = load_learner(args.checkpoint, args.config, args.data_root, args.method, args.device)
    predictions = evaluate(learner, args.episodes, args.dataset, args.data_root, options or None, args.ways,
                           args.shots, args.queries, args.test_episodes, args.seed, args.out, args.device)
    run_dir = predictions.attrs["run_dir"]
    print(format_table(summarize(load_rows([Path(run_dir)]))))
    flagged = predictions.drop_duplicates("episode")["in_training_classes"].sum()
    if flagged:
        print(f"\n{flagged} episode(s) show classes the checkpoint was trained on (column in_training_classes)")
    print(f"\nresults: {run_dir}/predictions.csv  (rows.jsonl, summary.md, run.json)")
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    from benchmark.savedmodel import upgrade_checkpoint

    if not args.config:
        raise BenchmarkError("upgrade-checkpoint needs --config, the experiment the checkpoint was trained with")
    out = upgrade_checkpoint(args.checkpoint, args.out, args.config, args.data_root, args.method)
    print(f"wrote {out}: the same weights with the learner, preprocessing and training classes recorded")
    return 0
