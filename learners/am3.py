"""AM3: Adaptive Modality Mixture Mechanism."""
from __future__ import annotations

import dataclasses
import torch
from torch import Tensor, nn

from learners.base import class_means
from learners.encoder import ModelSpec
from learners.protonet import ProtoNet
from learners.registry import LEARNERS
from tasks.episode import Episode
from tasks.errors import BenchmarkError


@LEARNERS.register("am3")
class AM3(ProtoNet):
    """AM3 (Xing, Rostamzadeh, Oreshkin & Pinheiro, NeurIPS 2019), on Prototypical Networks.

    Each class's prototype mixes its image prototype ``p`` with a transform of the
    class-level text embedding ``t`` (``episode.class_text``, encoded by
    ``spec.text_encoder``) through a gate computed from the text alone:
    ``w = g(t)``, ``lambda = sigmoid(h(w))`` and ``prototype = lambda * p + (1 - lambda) * w``,
    with ``g`` and ``h`` two-layer MLPs. Queries are images, scored like ProtoNet.
    The "image" side may itself be fused image + caption features (any fusion);
    a text-only setting leaves nothing for the gate to mix and is rejected.
    """

    @dataclasses.dataclass
    class Config(ProtoNet.Config):
        hidden: int = 300  # hidden size of g and h (the paper's 300)
        gate_bias: float = 0.0  # initial bias of h's last layer (positive: start near image-only)
        force_gate: float | None = None  # fix lambda to this value in [0, 1] (1: exactly ProtoNet)

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.force_gate is not None and not 0.0 <= self.force_gate <= 1.0:
                raise ValueError(f"force_gate must be in [0, 1] or null, got {self.force_gate}")

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

    def adapt(self, episode: Episode) -> Tensor:
        """Mixed prototypes ``[n_way, D]``."""
        if episode.class_text is None:
            raise BenchmarkError("am3 needs class-level text in every episode (episode.class_text is None)")
        prototypes = class_means(self.embed(episode.support), episode.support_labels, episode.n_way)
        w, gate = self.mixing(episode.class_text)
        return gate * prototypes + (1 - gate) * w
