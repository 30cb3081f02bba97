"""Class text fused into prototypes by one of the zoo's fusions (image-only queries)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import Tensor

from learners.am3 import ClassTextMask
from learners.base import class_means
from learners.encoder import ModelSpec
from learners.protonet import ProtoNet
from learners.registry import FUSIONS, LEARNERS
from tasks.episode import Episode
from tasks.errors import BenchmarkError, UnsupportedSetting


@LEARNERS.register("classfusion")
class ClassTextFusion(ClassTextMask, ProtoNet):
    """Prototypical Networks whose prototypes fuse the class text through a registered fusion
    (this suite's construction; with ``fusion: gated`` it is AM3 with a smaller MLP).

    A class's prototype is ``fusion({"image": p, "text": t})`` with ``p`` the mean support
    embedding and ``t`` its encoded class text; a query (images only) is
    ``fusion({"image": q})``, so the fusion must accept items without text
    (``attention``, ``mean``, ``gated``, ``film``, ``lowrank``; ``concat`` and ``late`` need every
    modality on every item and are rejected). Scoring is ProtoNet's. A class without text
    (see :class:`learners.am3.ClassTextMask`) is fused from its image prototype alone.

    Config:
        fusion: registered fusion name; fusion_options: its keyword options.
        text_dropout: probability of dropping a class's text in a training episode.
        class_text: ``False`` makes the image-only control: prototypes and queries go through the
            fusion's image path alone, in training and at test, so a paired comparison with the same
            fusion using text measures what the text adds at an equal learned image transform.
    """

    @dataclasses.dataclass
    class Config(ProtoNet.Config):
        fusion: str = "attention"
        fusion_options: dict = dataclasses.field(default_factory=dict)
        text_dropout: float = 0.0
        class_text: bool = True

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.0 <= self.text_dropout <= 1.0:
                raise ValueError(f"text_dropout must be in [0, 1], got {self.text_dropout}")

    supports_modalities = ("image",)
    requires_class_text = True

    def __init__(self, spec: ModelSpec, config: Config | None = None) -> None:
        super().__init__(spec, config)
        if spec.text_encoder is None:
            raise BenchmarkError("classfusion needs a text encoder for the class-level text (ModelSpec.text_encoder)")
        self.text_encoder = spec.text_encoder
        name = self.config.fusion
        try:
            self.fusion = FUSIONS.get(name)({"image": self.encoder.out_dim, "text": spec.text_encoder.out_dim},
                                            **self.config.fusion_options)
        except TypeError as err:
            raise BenchmarkError(f"learner_options.classfusion.fusion_options for {name!r}: {err}") from None
        if not self.fusion.accepts(("image",)):
            raise UnsupportedSetting(f"classfusion: fusion {name!r} cannot fuse the image-only queries; use one "
                                     "that accepts a missing modality (attention, mean, gated, film, lowrank)")

    def adapt(self, episode: Episode) -> Tensor:
        """Fused prototypes ``[n_way, fusion.out_dim]``."""
        if episode.class_text is None:
            raise BenchmarkError("classfusion needs class-level text in every episode (episode.class_text is None)")
        prototypes = class_means(self.embed(episode.support), episode.support_labels, episode.n_way)
        if not self.config.class_text:
            return self.fusion({"image": prototypes})
        fused = self.fusion({"image": prototypes, "text": self.text_encoder(episode.class_text)})
        keep = self.text_kept(episode, self.config.text_dropout)
        if keep is not None:
            fused = torch.where(keep.unsqueeze(1), fused, self.fusion({"image": prototypes}))
        return fused

    def predict(self, state: Tensor, query: Mapping[str, Tensor]) -> Tensor:
        prototypes = self.require_state(state)
        return self.logits(self.fusion({"image": self.embed(query)}), prototypes)
