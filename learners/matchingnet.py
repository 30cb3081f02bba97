"""Matching Networks."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from learners.base import Learner
from learners.registry import LEARNERS
from tasks.episode import Episode


@LEARNERS.register("matchingnet")
class MatchingNet(Learner):
    """Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

    A query attends over the support items with a softmax of cosine similarities,
    ``a(q, x_i) = softmax_i(c * cos(f(q), g(x_i)))``, and its class distribution is
    ``P(y | q) = sum_i a(q, x_i) onehot(y_i)``; the logits are ``log P``. Here
    ``f = g`` is the encoder -> fusion stack, without the full-context embeddings
    (no LSTMs over the support set). ``c = 1`` is the paper's plain cosine.
    """

    @dataclasses.dataclass
    class Config:
        temperature: float = 1.0  # c, the scale of the cosine similarities (1: the paper)

        def __post_init__(self) -> None:
            if not self.temperature > 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")

    fixed_embedding = True

    def adapt(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Support embeddings ``[N*K, D]`` and one-hot labels ``[N*K, N]``."""
        return self.embed(episode.support), F.one_hot(episode.support_labels, episode.n_way)

    def predict(self, state: tuple[Tensor, Tensor], query: Mapping[str, Tensor]) -> Tensor:
        support, onehot = self.require_state(state)

        def log_probs(q: Tensor, s: Tensor) -> Tensor:  # [Q, D'], [S, D'] -> [Q, N]
            attention = (self.config.temperature * F.normalize(q, dim=-1) @ F.normalize(s, dim=-1).T).softmax(-1)
            return torch.log((attention @ onehot.to(attention.dtype)).clamp_min(1e-12))

        return self.encoder.compare(log_probs, self.embed(query), support)

    def loss(self, episodes: Sequence[Episode]) -> Tensor:
        losses = [F.cross_entropy(self.predict(self.adapt(ep), ep.query), ep.query_labels) for ep in episodes]
        return torch.stack(losses).mean()
