"""AM3's gate during training: the collapse measures, recorded without changing what is trained.

* :class:`GateTracker` records, every ``every`` training steps, the gate ``lambda`` (1 = image
  prototype) of every class of the train, val and test splits, and the measures of :func:`separation`.
  It is driven by :class:`TrackingSampler`, which wraps the training sampler (the training loop asks it
  for each step's episode), so the shared training loop needs no hook. The class-text study
  (:mod:`benchmark.studies.miniimagenet_text`) and the harness (``train.gate_every``) use it.
* :func:`separation`: how well the text-only prototypes ``g(t)`` and the image-only prototypes
  separate the classes of a split (accuracy and cross-entropy of image queries classified by them).
  The collapse hypothesis: on training classes ``g(t)`` separates almost perfectly (it was fitted
  there), so the loss drives ``lambda`` to the text side, while on test classes it separates less.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmark.results import append_rows
from learners.base import class_means
from tasks.datasets import FewShotDataset
from tasks.episode import EpisodeLoader
from tasks.sampler import EpisodeManifest, EpisodeSampler


def _device(learner) -> torch.device:
    return next(iter(learner.parameters()), torch.empty(0)).device


@torch.no_grad()
def separation(learner, loader: EpisodeLoader, manifest: EpisodeManifest) -> dict[str, float]:
    """How each side alone classifies the image queries of ``manifest``: with the text-only prototypes
    ``g(t)`` (lambda = 0) and with the image prototypes (lambda = 1), the mean accuracy
    (``text_accuracy``, ``image_accuracy``), the mean cross-entropy (``text_loss``, ``image_loss``: the
    training loss at either end of the gate, which is what the gradient on lambda compares) and the mean
    prototype norm (``text_norm``, ``image_norm``: what lambda weighs, so ``lambda * image_norm`` against
    ``(1 - lambda) * text_norm`` is each side's share of a mixed prototype; with cosine logits only that
    share, not lambda, sets the prototype's direction).

    ``learner`` must have AM3's ``mixing(class_text) -> (w [N, D], lambda [N, 1])``.
    """
    measures = {f"{side}_{m}": [] for side in ("text", "image") for m in ("accuracy", "loss", "norm")}
    device = _device(learner)
    for spec in manifest.episodes:
        episode = loader.load(spec).to(device)
        query = learner.embed(episode.query)
        w, _ = learner.mixing(episode.class_text)
        prototypes = class_means(learner.embed(episode.support), episode.support_labels, episode.n_way)
        for side, protos in (("text", w), ("image", prototypes)):
            logits = learner.logits(query, protos)  # [n_query, n_way]
            measures[f"{side}_accuracy"].append((logits.argmax(-1) == episode.query_labels).float().mean().item())
            measures[f"{side}_loss"].append(torch.nn.functional.cross_entropy(logits, episode.query_labels).item())
            measures[f"{side}_norm"].append(protos.norm(dim=-1).mean().item())
    return {name: float(np.mean(values)) for name, values in measures.items()}


class GateTracker:
    """Records lambda per class and :func:`separation` per split during training, to ``path`` (JSONL).

    Args:
        learner: an AM3 learner (anything with ``mixing``); other learners are not tracked.
        loader: episodes as the learner trains on them (pixels or frozen features), with class text.
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
        self._last_step: int | None = None

    def __call__(self, step: int) -> None:
        """Record the state before training step ``step`` (i.e. after ``step - 1`` updates), once per
        step (a meta-batch draws several episodes per step)."""
        if self.every <= 0 or (step - 1) % self.every or step == self._last_step:
            return
        self._last_step = step
        was_training = self.learner.training
        self.learner.eval()
        try:
            with torch.no_grad():
                for split, manifest in self.manifests.items():
                    classes = torch.as_tensor(self.dataset.split_classes(split))
                    _, gate = self.learner.mixing(self.loader.class_text[classes].to(_device(self.learner)))
                    record = {"step": step - 1, "split": split, "classes": len(classes),
                              "gate_mean": gate.mean().item(),
                              "gate_min": gate.min().item(), "gate_max": gate.max().item(),
                              "gates": {self.dataset.class_names[c]: float(f"{g:.4g}") for c, g in
                                        zip(classes.tolist(), gate.squeeze(1).tolist())},
                              **separation(self.learner, self.loader, manifest)}
                    self.records.append(record)
                    append_rows(self.path, [record])
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
