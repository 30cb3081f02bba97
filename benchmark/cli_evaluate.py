"""``evaluate`` and ``upgrade-checkpoint`` subcommands (the work is done by :mod:`benchmark.api`)."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("benchmark")

EXAMPLES = """\
examples:
  python run_benchmark.py evaluate --checkpoint runs/<run>/checkpoints/protonet-image-none.pt --out runs/eval
  python run_benchmark.py evaluate --checkpoint model.pt --episodes episodes.json --out runs/eval
  python run_benchmark.py evaluate --checkpoint results/checkpoints/omniglot_protonet_5w1s_2k.pt \\
      --config benchmark/configs/omniglot_protonet_5w1s_2k.yaml --data-root ../shared/data \\
      --ways 20 --shots 1 --test-episodes 100 --out runs/eval     # an older bare state dict

Episode files (JSON or CSV) are described in docs/python-api.md.
"""


def add_arguments(sub) -> None:
    """Add the ``evaluate`` and ``upgrade-checkpoint`` parsers to ``sub``."""
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on sampled test episodes or on an episode file",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    ev.add_argument("--checkpoint", required=True, help="model file written by a run (or an older state dict)")
    ev.add_argument("--episodes", help="JSON or CSV episode file: run exactly these episodes")
    ev.add_argument("--dataset", help="dataset to sample episodes from (default: the checkpoint's)")
    ev.add_argument("--data-root", help="folder holding the dataset")
    ev.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                    help="dataset option (value parsed as YAML), e.g. split=vinyals")
    ev.add_argument("--ways", type=_ints, help="test ways (default: the checkpoint's config)")
    ev.add_argument("--shots", type=_ints, help="test shots (default: the checkpoint's config)")
    ev.add_argument("--queries", type=int, help="test queries per class")
    ev.add_argument("--test-episodes", type=int, help="episodes per way/shot")
    ev.add_argument("--seed", type=int, help="seed of the sampled episodes (default: the checkpoint's run)")
    _bare_arguments(ev)
    ev.add_argument("--out", required=True, help="output folder (an eval-<checkpoint>-<hash> subfolder)")
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    ev.add_argument("--threads", type=int, default=0, help="torch CPU threads")

    up = sub.add_parser("upgrade-checkpoint", help="write a self-describing copy of an older bare checkpoint")
    up.add_argument("checkpoint", help="the bare state dict")
    _bare_arguments(up)
    up.add_argument("--data-root", help="folder holding the config's dataset")
    up.add_argument("--out", required=True, help="the new model file")


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
    from benchmark.results import format_table, read_rows, summarize
    from benchmark.savedmodel import load_learner
    from tasks.errors import BenchmarkError

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
    from pathlib import Path

    print(format_table(summarize(read_rows(Path(run_dir) / "rows.jsonl"))))
    flagged = predictions.drop_duplicates("episode")["in_training_classes"].sum()
    if flagged:
        print(f"\n{flagged} episode(s) show classes the checkpoint was trained on (column in_training_classes)")
    print(f"\nresults: {run_dir}/predictions.csv  (rows.jsonl, summary.md, run.json)")
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    from benchmark.savedmodel import upgrade_checkpoint
    from tasks.errors import BenchmarkError

    if not args.config:
        raise BenchmarkError("upgrade-checkpoint needs --config, the experiment the checkpoint was trained with")
    out = upgrade_checkpoint(args.checkpoint, args.out, args.config, args.data_root, args.method)
    print(f"wrote {out}: the same weights with the learner, preprocessing and training classes recorded")
    return 0
