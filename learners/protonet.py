"""Prototypical Networks."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from learners.base import Learner, class_means
from learners.registry import LEARNERS
from tasks.episode import Episode


@LEARNERS.register("protonet")
class ProtoNet(Learner):
    """Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

    Each class is the mean of its support embeddings (its prototype); a query
    is scored by the negative squared Euclidean distance to each prototype.
    The embedding is any encoder -> fusion stack, so the same learner runs
    image-only, text-only or on fused image+text features.
    """

    @dataclasses.dataclass
    class Config:
        distance: str = "euclidean"  # "euclidean" (squared) or "cosine"
        temperature: float = 10.0  # scale of cosine logits (unused for euclidean)

        def __post_init__(self) -> None:
            if self.distance not in ("euclidean", "cosine"):
                raise ValueError(f"distance must be 'euclidean' or 'cosine', got {self.distance!r}")

    fixed_embedding = True

    def adapt(self, episode: Episode) -> Tensor:
        """Prototypes ``[n_way, D]``."""
        return class_means(self.embed(episode.support), episode.support_labels, episode.n_way)

    def predict(self, state: Tensor, query: Mapping[str, Tensor]) -> Tensor:
        prototypes = self.require_state(state)
        return self.encoder.compare(self.logits, self.embed(query), prototypes)

    def logits(self, z: Tensor, prototypes: Tensor) -> Tensor:
        """Scores ``[Q, N]`` of embeddings ``z [Q, D]`` against ``prototypes [N, D]``."""
        if self.config.distance == "cosine":
            return self.config.temperature * F.normalize(z, dim=-1) @ F.normalize(prototypes, dim=-1).T
        return -torch.cdist(z, prototypes).pow(2)

    def loss(self, episodes: Sequence[Episode]) -> Tensor:
        losses = [F.cross_entropy(self.predict(self.adapt(ep), ep.query), ep.query_labels) for ep in episodes]
        return torch.stack(losses).mean()
