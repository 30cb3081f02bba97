"""Fusion modules: combine per-modality features into one vector.

Every fusion is ``forward(features: Mapping[str, Tensor]) -> Tensor [B, out_dim]``
with ``features[m]`` of shape ``[B, in_dims[m]]``, and declares ``out_dim`` and
whether it tolerates a missing modality (``supports_missing``).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from learners.registry import FUSIONS
from tasks.errors import UnsupportedSetting


class Fusion(nn.Module):
    """Base class. ``in_dims`` maps modality name -> feature size."""

    supports_missing: bool = False
    out_dim: int

    def __init__(self, in_dims: Mapping[str, int]) -> None:
        super().__init__()
        if len(in_dims) < 2:
            raise UnsupportedSetting(f"fusion {type(self).__name__} needs two or more modalities, got {list(in_dims)}")
        self.modalities = tuple(sorted(in_dims))
        self.in_dims = dict(in_dims)

    def _check(self, features: Mapping[str, Tensor]) -> list[str]:
        present = [m for m in self.modalities if m in features]
        if not present or (len(present) < len(self.modalities) and not self.supports_missing):
            missing = sorted(set(self.modalities) - set(present))
            raise UnsupportedSetting(
                f"fusion {getattr(self, 'registry_name', type(self).__name__)!r} needs every modality "
                f"{list(self.modalities)} but {missing} is missing; use a fusion that handles missing "
                "modalities (e.g. 'attention') or show all modalities on both sides"
            )
        return present


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """Concatenate the features in a fixed (sorted) modality order: ``out_dim = sum(in_dims)``."""

    def __init__(self, in_dims: Mapping[str, int]) -> None:
        super().__init__(in_dims)
        self.out_dim = sum(in_dims.values())

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        self._check(features)
        return torch.cat([features[m] for m in self.modalities], dim=-1)


@FUSIONS.register("attention")
class AttentionFusion(Fusion):
    """Attention-weighted sum (the seed paper's fusion, done correctly).

    Each modality is projected to a shared dimension, ``F_m = P_m x_m``; a learned
    scorer gives each modality a score per example, ``s_m = v_m . tanh(F_m)``;
    ``w = softmax_m(s)`` over the modalities present and ``fused = sum_m w_m F_m``.
    A missing modality is left out of the softmax, so it handles image-only queries.

    Args:
        in_dims: modality -> input size.
        dim: shared projection size.
    """

    supports_missing = True

    def __init__(self, in_dims: Mapping[str, int], dim: int = 128) -> None:
        super().__init__(in_dims)
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in in_dims.items()})
        self.score = nn.ModuleDict({m: nn.Linear(dim, 1) for m in in_dims})
        self.out_dim = dim
        self.last_weights: Tensor | None = None

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        present = self._check(features)
        projected = torch.stack([self.project[m](features[m]) for m in present], dim=1)  # [B, M, dim]
        scores = torch.cat([self.score[m](torch.tanh(projected[:, i])) for i, m in enumerate(present)], dim=1)
        weights = scores.softmax(dim=1)  # [B, M]
        self.last_weights = weights.detach()
        return (weights.unsqueeze(-1) * projected).sum(dim=1)
