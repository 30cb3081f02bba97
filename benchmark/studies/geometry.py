"""Where AM3's two prototypes lie: the geometry behind its gate collapse (issue 16, step 4).

AM3 mixes each class's image prototype ``p_c`` with its text prototype ``w_c = g(t_c)``:
``prototype = lambda * p_c + (1 - lambda) * w_c``, and compares image queries with prototypes by
squared Euclidean distance. A mixture can only help if ``w_c`` lies among the image prototypes:
moving every prototype by much more than the distance between classes adds a class-dependent
term ``2 (1 - lambda) q . w_c`` to the logits that has nothing to do with the query's class.
:func:`prototype_geometry` measures, on the classes of a split, the image side (feature norm,
distance between 1-shot prototypes of different classes, between class means) against the text
side (``w``'s norm, distance between classes, distance to its own class mean) and ``lambda``.

Run it on a study folder whose AM3 heads were trained (``checkpoints/<method>-<shot>shot.pt``):

    python -m benchmark.studies.geometry --data-root ../shared/data \\
        --checkpoint results/miniimagenet_text/backbone-conv4-64-84px.pt --study STUDY_DIR --methods am3

It writes ``STUDY_DIR/geometry.json`` and ``geometry.md``, with each method at initialisation (the
study's seed) and trained.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmark.results import atomic_write_text
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def mean_distance_between_rows(x: Tensor) -> float:
    """Mean Euclidean distance between distinct rows of ``x [n, D]`` (n >= 2)."""
    n = len(x)
    return float(torch.cdist(x, x).sum() / (n * (n - 1)))


@torch.no_grad()
def prototype_geometry(mixing: Callable[[Tensor], tuple[Tensor, Tensor]], features: Tensor, labels: Tensor,
                       class_text: Tensor, classes: Sequence[int], seed: int = 0) -> dict[str, float]:
    """Image and text prototypes of ``classes`` compared (distances in feature units).

    Args:
        mixing: AM3's ``mixing``: class text ``[C, T]`` -> (``w [C, D]``, ``lambda [C, 1]``).
        features: image features ``[n_items, D]``; ``labels``: their classes ``[n_items]``.
        class_text: text embedding of every class ``[n_classes, T]``.
        classes: the classes to measure (at least two).
        seed: picks the one image per class of the 1-shot prototypes.
    """
    if len(classes) < 2:
        raise BenchmarkError(f"prototype_geometry needs at least two classes, got {list(classes)}")
    rng = np.random.default_rng(seed)
    index = torch.as_tensor(list(classes))
    members = [(labels == c).nonzero().flatten() for c in index]
    one_shot = torch.stack([features[m[int(rng.integers(len(m)))]] for m in members])  # [C, D]
    means = torch.stack([features[m].mean(0) for m in members])  # [C, D]
    w, gate = mixing(class_text[index])
    return {"classes": len(index),
            "image_feature_norm": float(features[torch.cat(members)].norm(dim=1).mean()),
            "image_1shot_prototype_distance_between_classes": mean_distance_between_rows(one_shot),
            "image_class_mean_distance_between_classes": mean_distance_between_rows(means),
            "text_prototype_norm": float(w.norm(dim=1).mean()),
            "text_prototype_distance_between_classes": mean_distance_between_rows(w),
            "text_prototype_distance_to_its_class_mean": float((w - means).norm(dim=1).mean()),
            "lambda": float(gate.mean())}


def study_geometry(study, methods: Sequence[str], shots: Sequence[int]) -> list[dict]:
    """Rows of :func:`prototype_geometry` for each AM3 ``method`` and ``shot`` of ``study`` (a
    :class:`~benchmark.studies.miniimagenet_text.Study`), at initialisation and trained, on each split."""
    rows = []
    for label in methods:
        initial = study.build(label).eval()  # the first build fills study.features
        if not hasattr(initial, "mixing"):
            raise BenchmarkError(f"study method {label!r} has no gate (not an AM3 variant); choose among the am3* "
                                 "methods")
        features, labels, text = study.features.float(), torch.as_tensor(study.dataset.labels), study.class_text.float()
        for shot in shots:
            path = study.out / "checkpoints" / f"{label}-{shot}shot.pt"
            if not path.is_file():
                raise BenchmarkError(f"{path} does not exist: train {label!r} at {shot}-shot in this study folder "
                                     "first (python -m benchmark.studies.miniimagenet_text --out ...)")
            trained = study.build(label).eval()
            trained.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=False)
            for state, model in (("init", initial), ("trained", trained)):
                for split in SPLITS:
                    classes = study.dataset.split_classes(split).tolist()
                    rows.append({"method": label, "n_shot": shot, "state": state, "split": split,
                                 **prototype_geometry(model.mixing, features, labels, text, classes, study.cfg.seed)})
    return rows


def markdown(rows: list[dict]) -> str:
    """One line per (method, shot, state, split), distances rounded to 0.01."""
    keys = [k for k in rows[0] if k not in ("method", "n_shot", "state", "split", "classes")]
    lines = ["| method | shot | state | split | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
             "| --- " * (4 + len(keys)) + "|"]
    for r in rows:
        values = " | ".join(f"{r[k]:.3f}" if k == "lambda" else f"{r[k]:.2f}" for k in keys)
        lines.append(f"| {r['method']} | {r['n_shot']} | {r['state']} | {r['split']} | {values} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmark.studies.cli import _csv
    from benchmark.studies.miniimagenet_text import Study, StudyConfig

    p = argparse.ArgumentParser(prog="python -m benchmark.studies.geometry", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder holding miniImageNet/ (Ravi layout)")
    p.add_argument("--checkpoint", required=True, help="the study's frozen backbone")
    p.add_argument("--study", required=True, help="study folder with the trained heads (checkpoints/)")
    p.add_argument("--methods", type=_csv(str), default=["am3"], help="AM3 variants (default am3)")
    p.add_argument("--shots", type=_csv(int), default=[1], help="shots the heads were trained for (default 1)")
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--l2-scale", type=float, help="the study's --l2-scale (default: read from its study.json)")
    p.add_argument("--max-per-class", type=int)
    p.add_argument("--classes-per-split", type=int)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if not Path(args.study, "checkpoints").is_dir():
            raise BenchmarkError(f"{args.study}/checkpoints does not exist; give the --out folder of a study run")
        l2_scale = args.l2_scale
        record = Path(args.study, "study.json")
        if l2_scale is None and record.is_file():  # the heads were trained on the features the study used
            l2_scale = json.loads(record.read_text()).get("config", {}).get("l2_scale")
        study = Study(StudyConfig(data_root=args.data_root, checkpoint=args.checkpoint, out=args.study,
                                  image_size=args.image_size, hidden=args.hidden, l2_scale=l2_scale,
                                  max_per_class=args.max_per_class,
                                  classes_per_split=args.classes_per_split, methods=["protonet", *args.methods],
                                  shots=args.shots))
        rows = study_geometry(study, args.methods, args.shots)
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.study)
    atomic_write_text(out / "geometry.json", json.dumps(rows, indent=1))
    atomic_write_text(out / "geometry.md", markdown(rows))
    print(markdown(rows), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
