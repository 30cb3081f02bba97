"""``ls``: list registered components (learners, fusions, backbones, text encoders, datasets)."""
from __future__ import annotations

import argparse

from benchmark.cli.base import Subcommand

KINDS = ("learners", "fusions", "backbones", "text_encoders", "datasets", "metrics")


class Ls(Subcommand):
    name = "ls"
    help = "list registered components"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("kind", choices=KINDS)
        parser.add_argument("pattern", nargs="?", default="*",
                            help="shell wildcard, e.g. 'proto*'; a dataset's name prints its options")

    def run(self, args: argparse.Namespace) -> int:
        import learners  # noqa: F401  (registers the built-in components)
        import tasks.datasets  # noqa: F401
        from learners.registry import BACKBONES, FUSIONS, LEARNERS, TEXT_ENCODERS
        from benchmark.metrics import METRICS
        from tasks.datasets import DATASETS

        registry = {"learners": LEARNERS, "fusions": FUSIONS, "backbones": BACKBONES,
                    "text_encoders": TEXT_ENCODERS, "datasets": DATASETS, "metrics": METRICS}[args.kind]
        if args.kind == "datasets" and args.pattern in DATASETS.names():  # one dataset: its options and layout
            from tasks.datasets import describe_dataset

            print(describe_dataset(args.pattern))
            return 0
        for name in registry.names(args.pattern):
            entry = registry.get(name)
            doc = (getattr(entry, "description", None) or entry.__doc__ or "").strip().splitlines()
            print(f"{name:18s} {doc[0] if doc else ''}")
        return 0
