"""Measurements for learners that put class text into prototypes: gate tracking, the collapse
hypothesis and accuracy when class text is missing for part of the test classes.

* :class:`GateTracker` records, every ``every`` training steps, AM3's gate ``lambda`` for every
  class of the train, val and test splits, and the collapse measures of :func:`separation`.
  It is driven by :class:`TrackingSampler`, which wraps the training sampler (the training loop
  asks it for each step's episode), so the shared training loop needs no hook.
* :func:`separation`: how well the text-only prototypes ``g(t)`` and the image-only prototypes
  separate the classes of a split (accuracy of nearest-prototype classification of image queries).
  The collapse hypothesis: on training classes ``g(t)`` separates almost perfectly (it was fitted
  there), so the loss drives ``lambda`` to the text side, while on test classes it separates less.
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
from learners.base import class_means
from tasks.datasets import FewShotDataset
from tasks.episode import EpisodeLoader
from tasks.errors import BenchmarkError
from tasks.sampler import EpisodeManifest, EpisodeSampler

log = logging.getLogger(__name__)

TEXT_FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.0)


@torch.no_grad()
def separation(learner, loader: EpisodeLoader, manifest: EpisodeManifest) -> dict[str, float]:
    """Mean accuracy over ``manifest`` of image queries classified by the nearest text-only prototype
    ``g(t)`` (``text_accuracy``) and by the nearest image prototype (``image_accuracy``).

    ``learner`` must have AM3's ``mixing(class_text) -> (w [N, D], lambda [N, 1])``.
    """
    text_acc, image_acc = [], []
    for spec in manifest.episodes:
        episode = loader.load(spec)
        query = learner.embed(episode.query)
        w, _ = learner.mixing(episode.class_text)
        prototypes = class_means(learner.embed(episode.support), episode.support_labels, episode.n_way)
        for store, protos in ((text_acc, w), (image_acc, prototypes)):
            store.append((learner.logits(query, protos).argmax(-1) == episode.query_labels).float().mean().item())
    return {"text_accuracy": float(np.mean(text_acc)), "image_accuracy": float(np.mean(image_acc))}


class GateTracker:
    """Records lambda per class and :func:`separation` per split during training, to ``path`` (JSONL).

    Args:
        learner: an AM3 learner (anything with ``mixing``); other learners are not tracked.
        loader: episodes of the study (frozen features and prepared class text).
        dataset: for the class splits and names.
        manifests: split -> a small fixed manifest used by :func:`separation`.
        path: the JSONL file; one line per (step, split).
        every: record every this many steps (and before the first).
    """

    def __init__(self, learner, loader: EpisodeLoader, dataset: FewShotDataset,
                 manifests: dict[str, EpisodeManifest], path: Path, every: int) -> None:
        self.learner, self.loader, self.dataset = learner, loader, dataset
        self.manifests, self.path, self.every = manifests, Path(path), every
        self.records: list[dict] = []

    def __call__(self, step: int) -> None:
        """Record the state before training step ``step`` (i.e. after ``step - 1`` updates)."""
        if self.every <= 0 or (step - 1) % self.every:
            return
        was_training = self.learner.training
        self.learner.eval()
        try:
            with torch.no_grad():
                for split, manifest in self.manifests.items():
                    classes = torch.as_tensor(self.dataset.split_classes(split))
                    _, gate = self.learner.mixing(self.loader.class_text[classes])
                    record = {"step": step - 1, "split": split, "gate_mean": gate.mean().item(),
                              "gate_min": gate.min().item(), "gate_max": gate.max().item(),
                              "gates": {self.dataset.class_names[c]: round(g, 5) for c, g in
                                        zip(classes.tolist(), gate.squeeze(1).tolist())},
                              **separation(self.learner, self.loader, manifest)}
                    self.records.append(record)
                    with self.path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
        finally:
            self.learner.train(was_training)


class TrackingSampler:
    """Wraps an :class:`EpisodeSampler`: calls ``tracker(step)`` before drawing each step's episode.

    The training loop draws one episode per step with ``sample(rng, step)``; the tracker runs
    under ``no_grad`` in eval mode and uses no random numbers, so training is unchanged by it.
    """

    def __init__(self, sampler: EpisodeSampler, tracker: GateTracker) -> None:
        self.sampler, self.tracker = sampler, tracker

    def sample(self, rng: np.random.Generator, episode_id: int = 0):
        self.tracker(episode_id)
        return self.sampler.sample(rng, episode_id)


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
