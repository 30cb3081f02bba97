"""Learners, backbones, text encoders and fusions; importing this registers the built-ins."""
from learners import (  # noqa: F401  (register components)
    am3,
    anil,
    backbones,
    baselinepp,
    classfusion,
    fusions,
    linear_probe,
    maml,
    matchingnet,
    pretrained,
    protonet,
    text,
)
from learners.base import Learner
from learners.encoder import ModelSpec, MultimodalEncoder
from learners.registry import BACKBONES, FUSIONS, LEARNERS, TEXT_ENCODERS

__all__ = ["BACKBONES", "FUSIONS", "LEARNERS", "TEXT_ENCODERS", "Learner", "ModelSpec", "MultimodalEncoder"]
