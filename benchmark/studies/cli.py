"""Command line of the miniImageNet class-text study: ``python -m benchmark.studies.miniimagenet_text``."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tasks.errors import BenchmarkError


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    from benchmark.studies.miniimagenet_text import METHODS

    p = argparse.ArgumentParser(prog="python -m benchmark.studies.miniimagenet_text",
                                description="miniImageNet image + WordNet class text on a frozen Conv-4 "
                                            "(see docs/findings-miniimagenet-text.md)")
    p.add_argument("--data-root", help="folder holding miniImageNet/ (Ravi layout); required unless --tables-only")
    p.add_argument("--checkpoint",
                   help="trained backbone: a harness checkpoint (<run>/checkpoints/protonet-image-none.pt); "
                        "required unless --tables-only")
    p.add_argument("--tables-only", action="store_true",
                   help="only regenerate the tables of --out from its rows.jsonl and gates-*.jsonl")
    p.add_argument("--out", default="results/miniimagenet_text/study", help="study folder (rerun to resume)")
    p.add_argument("--image-size", type=int, default=84, help="the size the backbone was trained at")
    p.add_argument("--hidden", type=int, default=64, help="channels of the trained Conv-4")
    p.add_argument("--l2-scale", type=float,
                   help="L2-normalise the frozen features and scale them by this (the metric of a backbone "
                        "trained with a cosine classifier, e.g. Baseline++: 2.236 gives logits 10 cos); default raw")
    p.add_argument("--max-per-class", type=int, help="miniimagenet subset: images per class")
    p.add_argument("--classes-per-split", type=int, help="miniimagenet subset: classes per split")
    p.add_argument("--methods", type=_csv(str), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--shots", type=_csv(int), default=[1, 5], help="test shots (default 1,5)")
    p.add_argument("--test-episodes", type=int, default=600, help="episodes per shot of the scored split")
    p.add_argument("--eval-split", default="test", choices=("test", "val"),
                   help="score the methods on test classes (the reported numbers, default) or on validation "
                        "classes (to choose among them: --select-fusion)")
    p.add_argument("--select-fusion", action="store_true",
                   help="after the study, choose classfusion's fusion from its validation scores "
                        "(writes OUT/selection.json; refused for a study scored on test classes)")
    p.add_argument("--train-episodes", type=int, default=3000, help="meta-training steps per method and shot")
    p.add_argument("--train-way", type=int, default=20)
    p.add_argument("--lr-decay-every", type=int, default=1000)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--val-episodes", type=int, default=200)
    p.add_argument("--gate-every", type=int, default=250, help="track AM3 gates every this many steps (0: off)")
    p.add_argument("--gate-episodes", type=int, default=100, help="episodes per split for the separation measure")
    p.add_argument("--text-fractions", type=_csv(float), default=[1.0, 0.75, 0.5, 0.25, 0.0],
                   help="fractions of test classes with class text (default 1,0.75,0.5,0.25,0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--debug", action="store_true")
    return p


def config_from_args(args: argparse.Namespace):
    from benchmark.config import TrainConfig
    from benchmark.studies.miniimagenet_text import METHODS, StudyConfig

    train = TrainConfig(way=args.train_way, query=15, episodes=args.train_episodes,
                        lr_decay_every=args.lr_decay_every, val_every=args.val_every,
                        val_episodes=args.val_episodes, checkpoint_every=500)
    return StudyConfig(data_root=args.data_root, checkpoint=args.checkpoint, out=args.out, image_size=args.image_size,
                       max_per_class=args.max_per_class, classes_per_split=args.classes_per_split,
                       hidden=args.hidden, l2_scale=args.l2_scale, methods=args.methods or list(METHODS),
                       shots=args.shots,
                       test_episodes=args.test_episodes, eval_split=args.eval_split, train=train, gate_every=args.gate_every,
                       gate_episodes=args.gate_episodes, text_fractions=args.text_fractions, seed=args.seed,
                       device=args.device)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    try:
        import torch

        from benchmark.tablewrite import to_markdown
        from benchmark.studies.miniimagenet_text import Study

        if args.tables_only:
            from benchmark.studies.miniimagenet_text import BASELINE, CONTROLS
            from benchmark.studies.tables import write_tables

            if not any((Path(args.out) / n).is_file() for n in ("rows.jsonl", "rows.jsonl.gz")):
                raise BenchmarkError(f"--tables-only: {args.out}/rows.jsonl does not exist; run the study first")
            table = write_tables(Path(args.out), BASELINE, CONTROLS)
        else:
            if not args.data_root or not args.checkpoint:
                raise BenchmarkError("give --data-root and --checkpoint (or --tables-only to redo the tables)")
            if args.threads:
                torch.set_num_threads(args.threads)
            table = Study(config_from_args(args)).run()
        print(to_markdown(table) if not table.empty else "(no comparison: the baseline has no rows)")
        if args.select_fusion:
            from benchmark.studies.fusion_choice import select_fusion

            selection = select_fusion(Path(args.out))
            print(f"fusion chosen on {selection.split}: {selection.choice} "
                  f"({', '.join(f'{k} {100 * v:.2f}' for k, v in sorted(selection.scores.items()))})")
        return 0
    except BenchmarkError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished methods are in {args.out}/rows.jsonl and training checkpoints in "
              f"{args.out}/checkpoints; rerun the same command to continue", file=sys.stderr)
        return 130
