"""Fusion modules: combine per-modality features into one vector.

Every fusion is ``forward(features: Mapping[str, Tensor]) -> Tensor [B, out_dim]`` with
``features[m]`` of shape ``[B, in_dims[m]]``, and declares ``out_dim`` and whether it tolerates a
missing modality (``supports_missing``). Its options are its constructor's keyword parameters.

Learners that score features against class representations (prototypes, support items, classifier
weights) do it through ``fusion.compare(fn, x, y)`` (reached as :meth:`MultimodalEncoder.compare`),
never by calling ``fn`` directly. For every fusion but ``late`` this is just ``fn(x, y)``; ``late``
splits the vectors into per-modality blocks, scores each block on its own and averages the logits.
This is the one place where late fusion enters the metric learners.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

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

    def accepts(self, present: Collection[str]) -> bool:
        """Whether items showing only the modalities ``present`` can be fused."""
        present = set(present) & set(self.modalities)
        return bool(present) and (present == set(self.modalities) or self.supports_missing)

    def compare(self, fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
        """Logits ``[B, N]`` of fused ``x [B, out_dim]`` against class representations ``y [N, out_dim]``,
        by the learner's scoring rule ``fn(x, y) -> [B, N]`` (e.g. a negative distance)."""
        return fn(x, y)

    def _check(self, features: Mapping[str, Tensor]) -> list[str]:
        present = [m for m in self.modalities if m in features]
        if not self.accepts(present):
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


class _ProjectedFusion(Fusion):
    """Base of fusions that first project every modality to a shared size ``dim``."""

    supports_missing = True

    def __init__(self, in_dims: Mapping[str, int], dim: int = 128) -> None:
        super().__init__(in_dims)
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in in_dims.items()})
        self.out_dim = dim

    def projected(self, features: Mapping[str, Tensor]) -> tuple[list[str], Tensor]:
        """The modalities present and their projections ``[B, M, dim]``."""
        present = self._check(features)
        return present, torch.stack([self.project[m](features[m]) for m in present], dim=1)


@FUSIONS.register("attention")
class AttentionFusion(_ProjectedFusion):
    """Attention-weighted sum (the seed paper's fusion, done correctly).

    Each modality is projected to a shared dimension, ``F_m = P_m x_m``; a learned
    scorer gives each modality a score per example, ``s_m = v_m . tanh(F_m)``;
    ``w = softmax_m(s)`` over the modalities present and ``fused = sum_m w_m F_m``.
    A missing modality is left out of the softmax, so it handles image-only queries.

    Args:
        in_dims: modality -> input size.
        dim: shared projection size.
    """

    def __init__(self, in_dims: Mapping[str, int], dim: int = 128) -> None:
        super().__init__(in_dims, dim)
        self.score = nn.ModuleDict({m: nn.Linear(dim, 1) for m in in_dims})
        self.last_weights: Tensor | None = None

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        present, projected = self.projected(features)  # [B, M, dim]
        scores = torch.cat([self.score[m](torch.tanh(projected[:, i])) for i, m in enumerate(present)], dim=1)
        weights = scores.softmax(dim=1)  # [B, M]
        self.last_weights = weights.detach()
        return (weights.unsqueeze(-1) * projected).sum(dim=1)


@FUSIONS.register("mean")
class MeanFusion(_ProjectedFusion):
    """Mean of the modalities after a linear projection of each to a shared dimension.

    ``fused = mean_{m present} P_m x_m``; a missing modality is left out of the mean.

    Args:
        in_dims: modality -> input size; dim: shared projection size.
    """

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.projected(features)[1].mean(dim=1)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class _ImageTextFusion(Fusion):
    """A fusion defined for exactly the modalities ``image`` and ``text``."""

    def __init__(self, in_dims: Mapping[str, int]) -> None:
        super().__init__(in_dims)
        if set(in_dims) != {"image", "text"}:
            raise UnsupportedSetting(
                f"fusion {getattr(self, 'registry_name', type(self).__name__)!r} combines exactly image and "
                f"text, got {sorted(in_dims)}"
            )


@FUSIONS.register("gated")
class GatedFusion(_ImageTextFusion):
    """An AM3-style convex gate per example (after Xing et al., NeurIPS 2019).

    The text is mapped into the image feature space, ``g(t)`` (a two-layer MLP);
    a gate computed from it, ``lambda = sigmoid(h(g(t)))`` (``h`` a two-layer MLP
    to a scalar), mixes the two: ``fused = lambda * x_image + (1 - lambda) * g(t)``.
    ``out_dim`` is the image feature size. An item without text is its image
    feature (``lambda = 1``); an item without an image is ``g(t)``.

    Args:
        in_dims: ``{"image": d_image, "text": d_text}``.
        hidden: hidden size of ``g`` and ``h``.
        gate_bias: initial bias of the gate's last layer (positive: start close to image-only).
    """

    supports_missing = True

    def __init__(self, in_dims: Mapping[str, int], hidden: int = 128, gate_bias: float = 0.0) -> None:
        super().__init__(in_dims)
        self.out_dim = in_dims["image"]
        self.transform = _mlp(in_dims["text"], hidden, self.out_dim)
        self.gate = _mlp(self.out_dim, hidden, 1)
        nn.init.constant_(self.gate[-1].bias, gate_bias)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        present = self._check(features)
        if "text" not in present:
            return features["image"]
        text = self.transform(features["text"])  # [B, d_image]
        if "image" not in present:
            return text
        gate = torch.sigmoid(self.gate(text))  # [B, 1]
        return gate * features["image"] + (1 - gate) * text


@FUSIONS.register("film")
class FiLMFusion(_ImageTextFusion):
    """Feature-wise linear modulation of the image features by the text (Perez et al., AAAI 2018).

    ``gamma, beta = split(W t + b)`` and ``fused = (1 + gamma) * x_image + beta``.
    The modulation is parametrised around the identity (``1 + gamma``) and its
    generator is zero-initialised, so training starts from the image features.
    ``out_dim`` is the image feature size. An item without text is left
    unmodulated; the image is required.

    Args:
        in_dims: ``{"image": d_image, "text": d_text}``.
    """

    supports_missing = True

    def __init__(self, in_dims: Mapping[str, int]) -> None:
        super().__init__(in_dims)
        self.out_dim = in_dims["image"]
        self.generator = nn.Linear(in_dims["text"], 2 * self.out_dim)
        nn.init.zeros_(self.generator.weight)
        nn.init.zeros_(self.generator.bias)

    def accepts(self, present: Collection[str]) -> bool:
        return "image" in present

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        present = self._check(features)
        if "text" not in present:
            return features["image"]
        gamma, beta = self.generator(features["text"]).chunk(2, dim=-1)
        return (1 + gamma) * features["image"] + beta


@FUSIONS.register("lowrank")
class LowRankFusion(Fusion):
    """Low-rank multimodal fusion (Liu et al., ACL 2018).

    Tensor fusion takes the outer product of the modality vectors, each with a
    1 appended (so unimodal terms survive), and maps it linearly to ``out_dim``.
    The weight tensor is factorised into ``rank`` modality-specific factors:
    ``fused = sum_r w_r prod_m ([x_m, 1] W_m^(r)) + b`` (products elementwise).
    A missing modality contributes only its appended 1 (``[0, ..., 0, 1]``), i.e.
    the unimodal terms of the others.

    Args:
        in_dims: modality -> input size.
        dim: output size.
        rank: number of factors.
    """

    supports_missing = True

    def __init__(self, in_dims: Mapping[str, int], dim: int = 128, rank: int = 4) -> None:
        super().__init__(in_dims)
        self.factors = nn.ParameterDict({
            m: nn.Parameter(nn.init.xavier_normal_(torch.empty(rank, d + 1, dim))) for m, d in in_dims.items()
        })
        self.rank_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, rank)).squeeze(0))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.out_dim = dim

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        present = self._check(features)
        batch = features[present[0]].shape[0]
        product = None
        for m in self.modalities:
            factor = self.factors[m]  # [rank, d_m + 1, dim]
            if m in features:
                ones = features[m].new_ones(batch, 1)
                term = torch.einsum("bd,rdo->rbo", torch.cat([features[m], ones], dim=-1), factor)
            else:  # only the appended 1: the last row of each factor
                term = factor[:, -1:, :].expand(-1, batch, -1)
            product = term if product is None else product * term  # [rank, B, dim]
        return torch.einsum("r,rbo->bo", self.rank_weights, product) + self.bias


@FUSIONS.register("late")
class LateFusion(Fusion):
    """Late fusion: each modality classifies on its own and the logits are averaged.

    ``forward`` concatenates the per-modality features (sorted modality order);
    ``compare(fn, x, y)`` splits ``x`` and ``y`` into those blocks and returns
    ``sum_m w_m fn(x_m, y_m)``. The weights are learned (a softmax over one
    parameter per modality, initially equal) unless fixed ones are given.
    Every item needs every modality.

    Args:
        in_dims: modality -> input size.
        weights: fixed weights per modality (normalised to sum 1), e.g. ``{"image": 0.7, "text": 0.3}``;
            ``None`` learns them.
    """

    def __init__(self, in_dims: Mapping[str, int], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(in_dims)
        self.out_dim = sum(in_dims.values())
        self.sizes = [in_dims[m] for m in self.modalities]
        if weights is None:
            self.weight_logits: nn.Parameter | None = nn.Parameter(torch.zeros(len(self.modalities)))
        else:
            if set(weights) != set(self.modalities) or any(w < 0 for w in weights.values()) \
                    or sum(weights.values()) <= 0:
                raise ValueError(f"late fusion weights must give a non-negative weight to each of "
                                 f"{list(self.modalities)} (not all zero), got {dict(weights)}")
            total = sum(weights.values())
            self.register_buffer("fixed", torch.tensor([weights[m] / total for m in self.modalities]))
            self.weight_logits = None

    def modality_weights(self) -> Tensor:
        """``[M]`` weights of the modalities (sorted order), summing to 1."""
        return self.weight_logits.softmax(0) if self.weight_logits is not None else self.fixed

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        self._check(features)
        return torch.cat([features[m] for m in self.modalities], dim=-1)

    def compare(self, fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
        weights = self.modality_weights()
        blocks = zip(x.split(self.sizes, dim=-1), y.split(self.sizes, dim=-1))
        return sum(w * fn(xm, ym) for w, (xm, ym) in zip(weights, blocks))
