"""Measurements for learners that put class text into prototypes: gate tracking, the collapse
hypothesis and accuracy when class text is missing for part of the test classes.

* :class:`GateTracker`, :class:`TrackingSampler` and :func:`separation` (defined in
  :mod:`benchmark.gates`, where the harness's ``train.gate_every`` uses them too): AM3's gate per class
  and the collapse measures, recorded during training.
* :func:`evaluate_missing_text`: accuracy when only a fraction ``p`` of the test classes have text.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from benchmark.evaluate import evaluate
from benchmark.gates import GateTracker, TrackingSampler, separation
from tasks.datasets import FewShotDataset
from tasks.episode import EpisodeLoader
from tasks.errors import BenchmarkError
from tasks.sampler import EpisodeManifest

log = logging.getLogger(__name__)

TEXT_FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.0)


def text_available(dataset: FewShotDataset, fraction: float, seed: int, split: str = "test") -> torch.Tensor:
    """Bool ``[n_classes]``: every class outside ``split`` and ``round(fraction * n)`` of its classes.

    The classes with text are the first ones of one seeded permutation of the split, so a smaller
    fraction's classes are a subset of a larger one's (the curve is over nested sets).

    Raises:
        BenchmarkError: ``fraction`` is not in [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise BenchmarkError(f"text fraction {fraction} must be in [0, 1]")
    classes = dataset.split_classes(split)
    order = np.random.default_rng(seed).permutation(classes)
    available = torch.ones(dataset.n_classes, dtype=torch.bool)
    available[torch.as_tensor(order[int(round(fraction * len(classes))):], dtype=torch.long)] = False
    return available


def evaluate_missing_text(learner, loader: EpisodeLoader, manifest: EpisodeManifest, dataset: FewShotDataset,
                          fractions: Sequence[float], device: torch.device, seed: int) -> dict[float, np.ndarray]:
    """Per-episode accuracy on ``manifest`` with class text for a fraction ``p`` of the test classes.

    Classes without text fall back to their image prototypes (the learner's ``ClassTextMask``).

    Returns:
        ``{p: float64 [n_episodes]}``.

    Raises:
        BenchmarkError: the learner cannot be told which classes have text.
    """
    if not hasattr(learner, "set_class_text_available"):
        raise BenchmarkError(f"{type(learner).__name__} uses no class text: missing text does not apply")
    out = {}
    try:
        for p in fractions:
            learner.set_class_text_available(text_available(dataset, p, seed))
            out[p] = evaluate(learner, loader, manifest, device)["accuracy"]
    finally:
        learner.set_class_text_available(None)
    return out


def gate_summary(records: Sequence[dict]) -> list[dict]:
    """Rows of the tracked gates without the per-class values (for CSV)."""
    return [{k: v for k, v in r.items() if k != "gates"} for r in records]


__all__ = ["GateTracker", "TrackingSampler", "TEXT_FRACTIONS", "evaluate_missing_text", "gate_summary",
           "separation", "text_available"]


def missing_text_rows(result: dict, run: Path) -> list[dict]:
    """The per-episode accuracies behind ``missing_text.csv`` and ``control.csv``, as rows: one per
    (model, shot, text fraction p, episode), with the test manifest's sha256 (from the run's ``run.json``).

    p = 1 is the model with all its class text at test; p = 0 the same model with none (its image path alone).
    """
    manifests = json.loads((run / "run.json").read_text()).get("manifests", {})
    rows = []
    for model, record in sorted(result.get("models", {}).items()):
        for shot, by_p in sorted(record.get("missing_text", {}).items(), key=lambda kv: int(kv[0])):
            sha = next((m["sha256"] for key, m in manifests.items() if key.endswith(f"w{shot}s")), None)
            for p, values in by_p.items():
                rows += [{"model": model, "learner": record.get("learner"), "n_shot": int(shot),
                          "text_fraction": float(p), "episode": i, "metric": "accuracy", "value": float(v),
                          "manifest_sha256": sha} for i, v in enumerate(values)]
    return rows


def write_missing_text_rows(out: Path, result: dict, run: Path) -> Path:
    """``missing_text_rows.jsonl.gz`` (:func:`missing_text_rows`), rewritten byte for byte the same from the same result."""
    import gzip

    from benchmark.results import atomic_write_bytes

    path = out / "missing_text_rows.jsonl.gz"
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in missing_text_rows(result, run))
    atomic_write_bytes(path, gzip.compress(text.encode(), mtime=0))
    return path
