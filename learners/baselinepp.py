"""Baseline++: pre-train a classifier, fine-tune a new cosine head per episode."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learners.base import Learner, class_means
from learners.encoder import ModelSpec
from learners.registry import LEARNERS
from tasks.episode import Episode
from tasks.errors import BenchmarkError


@LEARNERS.register("baselinepp")
class BaselinePP(Learner):
    """Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019).

    Meta-training is plain classification: the encoder -> fusion stack and a
    cosine classifier over all meta-train classes (``logits = s * cos(z, w_c)``)
    are trained on the items of the training episodes, labelled by their global
    class (``episode.class_ids``). At test the encoder is frozen and a new
    cosine head is fitted on the episode's support set with a few full-batch
    gradient steps. Differences from the paper: full-batch steps instead of
    mini-batches of 4, and the new head starts from the support class means
    (weight imprinting) unless ``head_init="random"`` (the paper's choice).
    """

    @dataclasses.dataclass
    class Config:
        scale: float = 10.0  # s, the scale of the cosine logits
        finetune_steps: int = 100  # gradient steps on the support set at test (the paper's 100)
        finetune_lr: float = 0.01
        optimizer: str = "sgd"  # "sgd" (momentum 0.9, as the paper) or "adam"
        weight_decay: float = 0.001
        head_init: str = "prototype"  # "prototype" (class means), "random" (seeded) or "zeros"
        head_seed: int = 0  # seed of the random head initialisation

        def __post_init__(self) -> None:
            if self.optimizer not in ("sgd", "adam"):
                raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
            if self.head_init not in ("prototype", "random", "zeros"):
                raise ValueError(f"head_init must be 'prototype', 'random' or 'zeros', got {self.head_init!r}")
            if self.finetune_steps < 0:
                raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps}")

    fixed_embedding = True
    #: the fitted head has a bias term (a linear, not a cosine, classifier)
    head_bias = False

    def __init__(self, spec: ModelSpec, config: Config | None = None) -> None:
        super().__init__(spec, config)
        self.classifier: nn.Linear | None = None
        if any(p.requires_grad for p in self.encoder.parameters()):
            if spec.n_train_classes < 2:
                raise BenchmarkError(f"{self.registry_name} pre-trains a classifier over the meta-train classes, "
                                     f"but ModelSpec.n_train_classes is {spec.n_train_classes}")
            ids = list(spec.train_class_ids) or list(range(spec.n_train_classes))
            if len(ids) != spec.n_train_classes:
                raise BenchmarkError(f"ModelSpec.train_class_ids has {len(ids)} ids for "
                                     f"n_train_classes={spec.n_train_classes}")
            index = torch.full((max(ids) + 1,), -1, dtype=torch.int64)
            index[torch.tensor(ids)] = torch.arange(len(ids))
            self.register_buffer("train_index", index, persistent=False)
            self.classifier = nn.Linear(self.encoder.out_dim, spec.n_train_classes, bias=self.head_bias)

    def head_logits(self, z: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """Logits ``[B, C]`` of features ``z [B, D]`` for a head ``weight [C, D]`` (cosine; no bias)."""
        return self.encoder.compare(
            lambda x, w: self.config.scale * F.normalize(x, dim=-1) @ F.normalize(w, dim=-1).T, z, weight)

    def global_labels(self, episode: Episode, labels: Tensor) -> Tensor:
        """Episode labels -> index of the global class among the meta-train classes."""
        ids = episode.class_ids[labels]
        index = self.train_index
        inside = ids < len(index)
        mapped = torch.where(inside, index[ids.clamp_max(len(index) - 1)], -1)
        if (mapped < 0).any():
            raise BenchmarkError(f"{self.registry_name} was given an episode with classes "
                                 f"{sorted(set(ids[mapped < 0].tolist()))} outside the meta-train split")
        return mapped

    def loss(self, episodes: Sequence[Episode]) -> Tensor:
        """Cross-entropy of the pre-training classifier on every item (support and query) of the episodes."""
        if self.classifier is None:
            raise BenchmarkError(f"{self.registry_name}: the encoder is frozen, there is nothing to train")
        losses = []
        for ep in episodes:
            z = torch.cat([self.embed(ep.support), self.embed(ep.query)])
            labels = self.global_labels(ep, torch.cat([ep.support_labels, ep.query_labels]))
            losses.append(F.cross_entropy(self.head_logits(z, self.classifier.weight, self.classifier.bias), labels))
        return torch.stack(losses).mean()

    def init_head(self, z: Tensor, labels: Tensor, n_way: int) -> Tensor:
        if self.config.head_init == "prototype":
            return class_means(z, labels, n_way)
        if self.config.head_init == "zeros":
            return z.new_zeros(n_way, z.shape[1])
        generator = torch.Generator().manual_seed(self.config.head_seed)
        bound = 1.0 / z.shape[1] ** 0.5  # nn.Linear's default range
        return (torch.rand(n_way, z.shape[1], generator=generator) * 2 - 1).mul_(bound).to(z)

    def adapt(self, episode: Episode) -> tuple[Tensor, Tensor | None]:
        """Fit a new head on the frozen support features: ``(weight [N, D], bias [N] or None)``."""
        cfg, n_way = self.config, episode.n_way
        with torch.no_grad():
            z = self.embed(episode.support).detach()
        labels = episode.support_labels
        weight = self.init_head(z, labels, n_way).requires_grad_()
        params = [weight]
        bias = None
        if self.head_bias:
            bias = z.new_zeros(n_way).requires_grad_()
            params.append(bias)
        optimiser = (torch.optim.SGD(params, lr=cfg.finetune_lr, momentum=0.9, weight_decay=cfg.weight_decay)
                     if cfg.optimizer == "sgd" else
                     torch.optim.Adam(params, lr=cfg.finetune_lr, weight_decay=cfg.weight_decay))
        with torch.enable_grad():
            for _ in range(cfg.finetune_steps):
                loss = F.cross_entropy(self.head_logits(z, weight, bias), labels)
                # gradients of the head only: the encoder and fusion stay untouched
                for p, g in zip(params, torch.autograd.grad(loss, params)):
                    p.grad = g
                optimiser.step()
        return weight.detach(), None if bias is None else bias.detach()

    def predict(self, state: tuple[Tensor, Tensor | None], query: Mapping[str, Tensor]) -> Tensor:
        weight, bias = self.require_state(state)
        return self.head_logits(self.embed(query), weight, bias)
