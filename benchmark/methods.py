"""Which methods a run compares: a learner on a modality setting with a fusion."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from benchmark.config import ExperimentConfig
from learners import LEARNERS, TEXT_ENCODERS
from learners.registry import BACKBONES, FUSIONS
from tasks.datasets import DATASETS
from tasks.episode import parse_modalities
from tasks.errors import BenchmarkError, UnsupportedSetting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """One learner on one modality setting with one fusion (``None`` for a single modality)."""

    learner: str
    modalities: tuple[str, ...]
    fusion: str | None

    @property
    def label(self) -> str:
        return f"{self.learner}[{'+'.join(self.modalities)}{'/' + self.fusion if self.fusion else ''}]"

    @property
    def slug(self) -> str:
        return f"{self.learner}-{'+'.join(self.modalities)}-{self.fusion or 'none'}"


def parse_method(text: str) -> Method:
    """``"learner:modalities[:fusion]"`` -> :class:`Method`, e.g. ``"protonet:image+text:attention"``."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise BenchmarkError(f"methods: {text!r} is not 'learner:modalities[:fusion]', "
                             "e.g. 'protonet:image' or 'protonet:image+text:attention'")
    learner, modalities = parts[0], parse_modalities(parts[1], f"methods: {text!r}")
    fusion = parts[2] if len(parts) == 3 else None
    if (fusion is None) != (len(modalities) == 1):
        raise BenchmarkError(f"methods: {text!r}: give a fusion exactly when there are two modalities")
    LEARNERS.get(learner)
    if fusion is not None:
        FUSIONS.get(fusion)
    return Method(learner, modalities, fusion)


def expand_methods(cfg: ExperimentConfig) -> list[Method]:
    """The explicit ``methods`` list, or every learner x modality setting x fusion (multimodal only)."""
    if cfg.methods:
        return list(dict.fromkeys(parse_method(m) for m in cfg.methods))
    methods = []
    for learner in cfg.learners:
        cls = LEARNERS.get(learner)
        for text in cfg.modalities:
            modalities = parse_modalities(text, "modalities")
            if "+".join(modalities) not in cls.supports_modalities:
                if len(cfg.modalities) == 1:
                    raise UnsupportedSetting(
                        f"learner {learner!r} does not support modalities {text!r}; "
                        f"it supports {list(cls.supports_modalities)}"
                    )
                log.info("skipping %s on %s: not supported by the learner", learner, text)
                continue
            fusions = cfg.fusions if len(modalities) > 1 else [None]
            methods += [Method(learner, modalities, f) for f in fusions]
    return methods


def check_names(cfg: ExperimentConfig) -> None:
    """Fail fast, before any work, on unknown component names."""
    DATASETS.get(cfg.dataset)
    BACKBONES.get(cfg.backbone)
    TEXT_ENCODERS.get(cfg.text_encoder)
    for name in cfg.learners:
        LEARNERS.get(name)
    for name in cfg.fusions:
        FUSIONS.get(name)
    for name in cfg.learner_options:
        LEARNERS.get(name)
