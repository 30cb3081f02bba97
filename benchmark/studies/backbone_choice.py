"""Which frozen backbone the class-text study should use (issue 16, step 1), decided on validation classes.

Backbones trained in different ways report different validation numbers (ProtoNet episodes report
nearest-prototype accuracy, Baseline++ a cosine head fine-tuned on each support set), so their own logs
cannot be compared. The study uses every backbone the same way, as frozen features under
nearest-prototype classification, so this module measures exactly that: ProtoNet on each candidate's
frozen features, as they are and L2-normalised (``<label>/l2``: the metric of a backbone trained with a
cosine classifier, which the study then uses with ``--l2-scale``), on one fixed manifest of validation episodes per shot (the 16 validation classes),
with the paired difference of every candidate against the first. The test classes are not touched.

Run::

    python -m benchmark.studies.backbone_choice --data-root ../shared/data \\
        --candidate protonet=results/miniimagenet_text/backbone-conv4-64-84px.pt \\
        --candidate baselinepp=<run>/checkpoints/baselinepp-image-none.pt \\
        --out results/miniimagenet_text/backbone_choice

It writes ``backbone_choice.csv``/``.md`` (accuracy ± 95% CI per candidate and shot, paired difference
to the first candidate with its p-value) and ``backbone_choice.json`` (the candidates' files and
sha256, the manifests, the commit, and the candidate chosen: the best at the first shot).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.results import atomic_write_text
from benchmark.stats import mean_ci95, paired_test
from benchmark.tablewrite import to_markdown
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)


def parse_candidate(text: str) -> tuple[str, Path]:
    """``label=path`` -> ``(label, Path(path))``; the file must exist."""
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise BenchmarkError(f"--candidate {text!r}: write it as LABEL=PATH, e.g. "
                             "protonet=results/miniimagenet_text/backbone-conv4-64-84px.pt")
    if not Path(path).is_file():
        raise BenchmarkError(f"--candidate {label}: checkpoint {path} does not exist; give the .pt file of a "
                             "trained model (e.g. <run>/checkpoints/protonet-image-none.pt)")
    return label, Path(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


L2_SCALE = 5 ** 0.5  # any positive scale gives the same nearest prototype; the study's default


def validation_accuracies(candidates: dict[str, Path], data_root: str, out: Path, shots: list[int],
                          episodes: int, features: tuple[str, ...] = ("raw", "l2"), image_size: int = 84,
                          hidden: int = 64, way: int = 5, query: int = 15,
                          max_per_class: int | None = None, classes_per_split: int | None = None,
                          seed: int = 0) -> tuple[dict[tuple[str, int], np.ndarray], dict[int, str]]:
    """Per-episode nearest-prototype accuracy on validation classes of each candidate's frozen features.

    Returns ``({(label, shot): accuracies [episodes]}, {shot: manifest sha256})``, with ``label`` the
    candidate's for raw features and ``<label>/l2`` for L2-normalised ones; every candidate sees the
    same episodes (manifests are stored in ``out/manifests``).
    """
    from benchmark.evaluate import evaluate
    from benchmark.studies.miniimagenet_text import Study, StudyConfig

    accuracies, manifests = {}, {}
    for (label, path), kind in ((c, kind) for c in candidates.items() for kind in features):
        cfg = StudyConfig(data_root=data_root, checkpoint=str(path), out=str(out), image_size=image_size,
                          hidden=hidden, l2_scale=L2_SCALE if kind == "l2" else None, methods=["protonet"],
                          shots=shots, way=way, query=query, test_episodes=episodes, max_per_class=max_per_class,
                          classes_per_split=classes_per_split, seed=seed)
        label = label if kind == "raw" else f"{label}/l2"
        study = Study(cfg)
        learner = study.build("protonet")  # nothing to train: prototypes of the frozen features
        loader = study.loader()
        for shot in shots:
            manifest = study.manifest("val", shot, episodes)
            manifests[shot] = manifest.sha256
            accuracies[label, shot] = np.asarray(evaluate(learner, loader, manifest, study.device)["accuracy"])
            log.info("%s %d-shot: %.2f %% on %d validation episodes", label, shot,
                     100 * accuracies[label, shot].mean(), episodes)
    empty = out / "checkpoints"  # the Study's head folder: nothing is trained here
    if empty.is_dir() and not any(empty.iterdir()):
        shutil.rmtree(empty)
    return accuracies, manifests


def choice_table(accuracies: dict[tuple[str, int], np.ndarray], reference: str) -> pd.DataFrame:
    """Accuracy ± 95% CI (percent) per candidate and shot, paired difference to ``reference``."""
    rows = []
    for (label, shot), values in accuracies.items():
        mean, ci = mean_ci95(values)
        row = {"candidate": label, "n_shot": shot, "accuracy": round(100 * mean, 2), "ci95": round(100 * ci, 2),
               "n_episodes": len(values), "difference": 0.0, "difference_ci95": 0.0, "p_value": 1.0}
        if label != reference:
            test = paired_test(values, accuracies[reference, shot])
            row.update(difference=round(100 * test.mean_difference, 2), difference_ci95=round(100 * test.ci95, 2),
                       p_value=float(f"{test.p_value:.3g}"))
        rows.append(row)
    return pd.DataFrame(rows).sort_values("n_shot", kind="stable").reset_index(drop=True)  # candidates in given order


def write_choice(out: Path, table: pd.DataFrame, candidates: dict[str, Path], manifests: dict[int, str],
                 shots: list[int], episodes: int) -> str:
    """Write the table and the record; returns the chosen candidate (best at ``shots[0]``; on a tie, the
    one given first)."""
    from benchmark.provenance import git_commit

    first = table[table["n_shot"] == shots[0]]
    chosen = str(first.loc[first["accuracy"].idxmax(), "candidate"])
    table.to_csv(out / "backbone_choice.csv", index=False)
    atomic_write_text(out / "backbone_choice.md",
                      f"Nearest-prototype accuracy (%) on {episodes} validation episodes per shot (5-way, 15 "
                      f"queries, the 16 validation classes), frozen features; difference: paired, against "
                      f"`{next(iter(candidates))}`. "
                      f"Chosen (best at {shots[0]}-shot): **{chosen}**.\n\n" + to_markdown(table) + "\n")
    record = {"chosen": chosen, "criterion": f"highest {shots[0]}-shot validation accuracy",
              "l2_scale": L2_SCALE,
              "candidates": {k: {"path": str(p), "sha256": sha256(p)} for k, p in candidates.items()},
              "manifest_sha256": {str(k): v for k, v in manifests.items()}, "episodes": episodes,
              "git_commit": git_commit()}
    atomic_write_text(out / "backbone_choice.json", json.dumps(record, indent=2) + "\n")
    return chosen


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark.studies.backbone_choice",
                                description="compare frozen backbones by nearest-prototype accuracy on "
                                            "miniImageNet validation classes")
    p.add_argument("--data-root", required=True, help="folder holding miniImageNet/ (Ravi layout)")
    p.add_argument("--candidate", action="append", required=True, type=str,
                   help="LABEL=PATH of a trained backbone checkpoint; give two or more (the first is the reference)")
    p.add_argument("--out", default="results/miniimagenet_text/backbone_choice")
    p.add_argument("--shots", default="1,5", help="validation shots (default 1,5; the first decides)")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--features", default="raw,l2", help="raw, l2 (L2-normalised) or both (default raw,l2)")
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--max-per-class", type=int, help="miniimagenet subset: images per class")
    p.add_argument("--classes-per-split", type=int, help="miniimagenet subset: classes per split")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        candidates = dict(parse_candidate(c) for c in args.candidate)
        if len(candidates) != len(args.candidate):
            raise BenchmarkError(f"--candidate labels repeat ({[c.partition('=')[0] for c in args.candidate]}); "
                                 "give each backbone its own label")
        try:
            shots = [int(s) for s in args.shots.split(",") if s.strip()]
        except ValueError:
            raise BenchmarkError(f"--shots {args.shots!r}: expected comma-separated integers, e.g. 1,5") from None
        if not shots or min(shots) < 1 or args.episodes < 2:
            raise BenchmarkError("--shots needs positive integers and --episodes at least 2")
        features = tuple(f.strip() for f in args.features.split(",") if f.strip())
        if not features or set(features) - {"raw", "l2"}:
            raise BenchmarkError(f"--features {args.features!r}: choose raw, l2 or raw,l2")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        accuracies, manifests = validation_accuracies(
            candidates, args.data_root, out, shots, args.episodes, features, image_size=args.image_size,
            hidden=args.hidden, max_per_class=args.max_per_class, classes_per_split=args.classes_per_split)
        table = choice_table(accuracies, next(iter(candidates)))
        chosen = write_choice(out, table, candidates, manifests, shots, args.episodes)
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(to_markdown(table))
    print(f"chosen: {chosen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
