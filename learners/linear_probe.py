"""Linear probe: a linear classifier fitted on each episode's support features."""
from __future__ import annotations

import dataclasses

from torch import Tensor

from learners.baselinepp import BaselinePP
from learners.registry import LEARNERS


@LEARNERS.register("linear_probe")
class LinearProbe(BaselinePP):
    """A linear classifier (softmax regression) fitted on each episode's support features.

    With frozen pretrained encoders and the attention fusion this is the seed
    paper's ``ImageTextFusion`` baseline done as intended (see
    ``benchmark/configs/seed_baseline.yaml``). With a trainable encoder it is the
    "Baseline" of Chen et al. (ICLR 2019): the encoder -> fusion stack is
    pre-trained with a linear classifier over the meta-train classes (only the
    trainable parts, e.g. the fusion, when the encoders are frozen; nothing at
    all when every part is frozen). At test a new linear head ``W z + b``,
    zero-initialised, is fitted on the support set by full-batch gradient steps.
    """

    @dataclasses.dataclass
    class Config(BaselinePP.Config):
        finetune_steps: int = 100
        finetune_lr: float = 0.01
        optimizer: str = "adam"  # insensitive to the scale of frozen features
        weight_decay: float = 0.0005
        head_init: str = "zeros"  # logistic regression from zero (deterministic, label-symmetric)

    head_bias = True

    def head_logits(self, z: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """Logits ``W z (+ b)`` ``[B, C]`` (late fusion: per-modality logits, averaged)."""
        logits = self.encoder.compare(lambda x, w: x @ w.T, z, weight)
        return logits if bias is None else logits + bias
