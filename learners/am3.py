"""AM3: Adaptive Modality Mixture Mechanism, with this suite's variants against gate collapse.

Also the class-text mask shared by the learners that put class text into prototypes: which
classes have text (``set_class_text_available``), used at test time to measure accuracy when
text is missing for some classes, and at training time by ``text_dropout``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learners.base import class_means
from learners.encoder import ModelSpec
from learners.protonet import ProtoNet
from learners.registry import LEARNERS
from tasks.episode import Episode
from tasks.errors import BenchmarkError


class ClassTextMask:
    """Mixin: which classes have class text, and random text dropout during training.

    ``class_text_available`` is ``None`` (every class has text) or a bool tensor over the
    dataset's global class ids; a class without text falls back to its image prototype.
    """

    class_text_available: Tensor | None = None

    def set_class_text_available(self, available: Tensor | None) -> None:
        """Bool ``[n_classes]`` (global class ids) of the classes whose text the learner may use; ``None``: all."""
        self.class_text_available = None if available is None else torch.as_tensor(available, dtype=torch.bool)

    def text_kept(self, episode: Episode, dropout: float) -> Tensor | None:
        """Bool ``[n_way]``: the episode's classes whose text is used (``None``: all of them)."""
        keep = None
        if self.class_text_available is not None:
            keep = self.class_text_available.to(episode.class_ids.device)[episode.class_ids]
        if dropout > 0 and self.training:
            kept = torch.rand(episode.n_way, device=episode.class_ids.device) >= dropout
            keep = kept if keep is None else keep & kept
        return keep


@LEARNERS.register("am3")
class AM3(ClassTextMask, ProtoNet):
    """AM3 (Xing, Rostamzadeh, Oreshkin & Pinheiro, NeurIPS 2019), on Prototypical Networks.

    Each class's prototype mixes its image prototype ``p`` with a transform of the
    class-level text embedding ``t`` (``episode.class_text``, encoded by
    ``spec.text_encoder``) through a gate computed from the text alone:
    ``w = g(t)``, ``lambda = sigmoid(h(w))`` and ``prototype = lambda * p + (1 - lambda) * w``,
    with ``g`` and ``h`` two-layer MLPs. Queries are images, scored like ProtoNet.
    The "image" side may itself be fused image + caption features (any fusion);
    a text-only setting leaves nothing for the gate to mix and is rejected.

    Options beyond the paper (this suite's variants, for the gate collapse seen on miniImageNet,
    where lambda goes to ~0 and the prototypes become text-only):

    * ``gate_bias``: initial bias of ``h``'s last layer; positive starts near the image side
      (``sigmoid(2) = 0.88``).
    * ``gate_reg``: adds ``gate_reg * mean((lambda - gate_target)^2)`` over the episode's classes
      to the training loss, holding the gate near ``gate_target`` unless the loss gains more.
    * ``text_dropout``: during training each class's text is dropped with this probability and
      that class keeps its image prototype (``lambda = 1``), as for missing text at test time.
    * ``force_gate``: fix lambda (1: exactly ProtoNet; 0: text-only prototypes ``g(t)``, a learned
      text-to-image map that ignores the support images, i.e. zero-shot).

    A class without text (see :class:`ClassTextMask`) always gets its image prototype.
    """

    @dataclasses.dataclass
    class Config(ProtoNet.Config):
        hidden: int = 300  # hidden size of g and h (the paper's 300)
        gate_bias: float = 0.0  # initial bias of h's last layer (positive: start near image-only)
        force_gate: float | None = None  # fix lambda to this value in [0, 1] (1: exactly ProtoNet)
        gate_reg: float = 0.0  # weight of the gate regulariser (this suite's variant; 0: off)
        gate_target: float = 0.5  # where the regulariser holds lambda
        text_dropout: float = 0.0  # probability of dropping a class's text in a training episode

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.force_gate is not None and not 0.0 <= self.force_gate <= 1.0:
                raise ValueError(f"force_gate must be in [0, 1] or null, got {self.force_gate}")
            for name in ("gate_target", "text_dropout"):
                if not 0.0 <= getattr(self, name) <= 1.0:
                    raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
            if self.gate_reg < 0:
                raise ValueError(f"gate_reg must be >= 0, got {self.gate_reg}")

    supports_modalities = ("image", "image+text")
    requires_class_text = True

    def __init__(self, spec: ModelSpec, config: Config | None = None) -> None:
        super().__init__(spec, config)
        if spec.text_encoder is None:
            raise BenchmarkError("am3 needs a text encoder for the class-level text (ModelSpec.text_encoder)")
        self.text_encoder = spec.text_encoder
        dim, hidden = self.encoder.out_dim, self.config.hidden
        self.transform = nn.Sequential(nn.Linear(spec.text_encoder.out_dim, hidden), nn.ReLU(),
                                       nn.Linear(hidden, dim))  # g
        self.gate = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))  # h
        nn.init.constant_(self.gate[-1].bias, self.config.gate_bias)

    def mixing(self, class_text: Tensor) -> tuple[Tensor, Tensor]:
        """The transformed text ``w [N, D]`` and the gate ``lambda [N, 1]`` of each class."""
        w = self.transform(self.text_encoder(class_text))
        if self.config.force_gate is not None:
            return w, torch.full((w.shape[0], 1), self.config.force_gate, dtype=w.dtype, device=w.device)
        return w, torch.sigmoid(self.gate(w))

    def mixed(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Prototypes ``[n_way, D]`` and the gate actually applied ``[n_way, 1]`` (1 where text is missing)."""
        if episode.class_text is None:
            raise BenchmarkError("am3 needs class-level text in every episode (episode.class_text is None)")
        prototypes = class_means(self.embed(episode.support), episode.support_labels, episode.n_way)
        w, gate = self.mixing(episode.class_text)
        keep = self.text_kept(episode, self.config.text_dropout)
        if keep is not None:
            gate = torch.where(keep.unsqueeze(1), gate, torch.ones_like(gate))
        return gate * prototypes + (1 - gate) * w, gate

    def adapt(self, episode: Episode) -> Tensor:
        """Mixed prototypes ``[n_way, D]``."""
        return self.mixed(episode)[0]

    def loss(self, episodes: Sequence[Episode]) -> Tensor:
        """ProtoNet's loss on the mixed prototypes, plus the gate regulariser when ``gate_reg > 0``."""
        losses = []
        for ep in episodes:
            prototypes, gate = self.mixed(ep)
            loss = F.cross_entropy(self.predict(prototypes, ep.query), ep.query_labels)
            if self.config.gate_reg and self.config.force_gate is None:
                loss = loss + self.config.gate_reg * (gate - self.config.gate_target).pow(2).mean()
            losses.append(loss)
        return torch.stack(losses).mean()
