"""The learner API.

The harness owns devices, ``train()``/``eval()`` and ``no_grad``; a learner
that adapts by gradient turns gradients on locally.

* ``loss(episodes) -> Tensor``: the meta-training loss of a batch of episodes
  (the harness calls ``backward`` and steps the optimiser).
* ``adapt(episode) -> state``: adapt to the support side (``episode.support``,
  ``episode.support_labels``, ``episode.class_text``); must not look at the query.
* ``predict(state, query) -> logits [n_query, n_way]``.

Learners whose per-item embedding is fixed after training set
``fixed_embedding = True`` and implement ``embed(inputs) -> [B, D]``; the harness
then embeds each test item once and feeds episodes of embeddings, passed as the
modality ``"embedding"``.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from learners.encoder import ModelSpec
from tasks.episode import Episode
from tasks.errors import UnsupportedSetting

EMBEDDING = "embedding"


class Learner(nn.Module, ABC):
    """Base class of all learners. Subclasses define a dataclass ``Config`` of their options."""

    @dataclasses.dataclass
    class Config:
        pass

    #: the learner can work on image-only, text-only and fused inputs
    supports_modalities: ClassVar[tuple[str, ...]] = ("image", "text", "image+text")
    #: needs class-level text in every episode (``episode.class_text``)
    requires_class_text: ClassVar[bool] = False
    #: per-item embedding is fixed at test time (enables embedding caching)
    fixed_embedding: ClassVar[bool] = False
    #: uses the query set jointly when predicting (e.g. batch-norm statistics)
    transductive: ClassVar[bool] = False
    #: relabelling the support classes permutes the logit columns in the same way
    #: (false e.g. for MAML, whose head rows are tied to label positions)
    permutation_equivariant: ClassVar[bool] = True
    #: the training loss can run through ``torch.compile`` (false where the loss differentiates
    #: through inner-loop gradients, which compiled graphs do not support)
    compilable: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec, config: "Learner.Config | None" = None) -> None:
        super().__init__()
        setting = "+".join(spec.modalities)
        if setting not in self.supports_modalities:
            raise UnsupportedSetting(
                f"learner {getattr(self, 'registry_name', type(self).__name__)!r} does not run on {setting!r} "
                f"inputs; it supports {list(self.supports_modalities)}"
            )
        self.spec = spec
        self.config = config if config is not None else self.Config()
        self.encoder = spec.build_encoder()  # encoders -> fusion: features [B, encoder.out_dim]

    @abstractmethod
    def loss(self, episodes: Sequence[Episode]) -> Tensor:
        """Mean meta-training loss over ``episodes`` (a scalar with a graph)."""

    @abstractmethod
    def adapt(self, episode: Episode) -> Any:
        """Adapt to ``episode``'s support side; returns the state ``predict`` needs."""

    @abstractmethod
    def predict(self, state: Any, query: Mapping[str, Tensor]) -> Tensor:
        """Logits ``[n_query, n_way]`` for the query batch."""

    def embed(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Per-item features ``[B, D]``, or the precomputed ones the harness passes as ``"embedding"``.

        Only meaningful for ``fixed_embedding`` learners, whose features do not depend on the episode.
        """
        if not self.fixed_embedding:
            raise NotImplementedError(f"{type(self).__name__} has no fixed embedding")
        if EMBEDDING in inputs:
            return inputs[EMBEDDING]
        return self.encoder(inputs)

    def predict_episodes(self, episodes: Sequence[Episode]) -> list[Tensor]:
        """Logits ``[n_query, n_way]`` of each episode after adapting to its own support side.

        The harness evaluates through this; the default adapts one episode at a time, and a
        learner that can adapt several at once (MAML) overrides it.
        """
        return [self.predict(self.adapt(e), e.query) for e in episodes]

    def compile_backbone(self, backend: str = "inductor") -> bool:
        """Compile the image backbone in place with ``torch.compile`` (state-dict keys unchanged).

        Returns False, changing nothing, for learners that are not :attr:`compilable` or have no
        image backbone. Compilation errors fall back to eager execution (dynamo's ``suppress_errors``).
        """
        if not self.compilable or "image" not in self.encoder.encoders:
            return False
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
        self.encoder.encoders["image"].compile(backend=backend)
        return True

    @staticmethod
    def require_state(state: Any) -> Any:
        if state is None:
            raise RuntimeError("predict() was called before adapt(): call state = learner.adapt(episode) first")
        return state


def class_means(features: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Mean feature per class. ``features [B, D]``, ``labels [B]`` in ``0..n_way-1`` -> ``[n_way, D]``."""
    sums = torch.zeros(n_way, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=n_way).clamp_min(1).to(features.dtype)
    return sums / counts.unsqueeze(1)
