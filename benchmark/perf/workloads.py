"""Synthetic workloads for the speed benchmark and its tests: random images of the benchmark's
shapes (no dataset needed), this suite's learners on them, and one training step."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from learners import LEARNERS, ModelSpec
from learners.base import Learner
from tasks.datasets.base import FewShotDataset
from tasks.episode import Episode, EpisodeLoader, TaskSetting
from tasks.sampler import EpisodeSampler

IMAGE = TaskSetting(("image",), ("image",))


def random_dataset(shape: tuple[int, int, int], n_classes: int, per_class: int, seed: int = 0) -> FewShotDataset:
    """Random uint8 images of ``shape``; all classes in every split (speed only)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_classes * per_class, *shape), dtype=np.uint8)
    labels = np.repeat(np.arange(n_classes), per_class)
    third = n_classes // 3
    splits = {"train": np.arange(n_classes - 2 * third), "val": np.arange(n_classes - 2 * third, n_classes - third),
              "test": np.arange(n_classes - third, n_classes)}
    c = shape[0]
    return FewShotDataset(f"random{shape[1]}", images, labels, [f"c{i}" for i in range(n_classes)], splits,
                          mean=(0.5,) * c, std=(0.25,) * c)


def build(name: str, shape: tuple[int, int, int], device: torch.device, strided: bool = False,
          channels_last: bool = True, **options) -> Learner:
    """Learner ``name`` on image-only Conv-4-64 (seeded), with learner ``options``."""
    torch.manual_seed(0)
    spec = ModelSpec(("image",), IMAGE, shape,
                     backbone_options={"hidden": 64, "strided": strided, "channels_last": channels_last})
    cls = LEARNERS.get(name)
    return cls(spec, cls.Config(**options)).to(device)


def episodes(dataset: FewShotDataset, split: str, way: int, shot: int, query: int, n: int,
             device: torch.device, seed: int = 0) -> list[Episode]:
    """``n`` sampled image episodes of ``dataset``'s ``split``, on ``device``."""
    sampler = EpisodeSampler(dataset, split, way, shot, query)
    loader = EpisodeLoader(dataset.images, dataset.mean, dataset.std, setting=IMAGE)
    rng = np.random.default_rng(seed)
    return [loader.load(sampler.sample(rng, i)).to(device) for i in range(n)]


def train_step(learner: Learner, optimiser: torch.optim.Optimizer, batch: Sequence[Episode]) -> float:
    """One meta-training step on ``batch``; returns the loss."""
    learner.train()
    loss = learner.loss(batch)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss.item()
