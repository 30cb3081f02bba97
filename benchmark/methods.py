"""Which methods a run compares: a learner on a modality setting with a fusion."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from benchmark.config import ExperimentConfig
from learners import LEARNERS, TEXT_ENCODERS
from learners.registry import BACKBONES, FUSIONS
from tasks.datasets import DATASETS
from tasks.episode import TaskSetting, parse_modalities
from tasks.errors import BenchmarkError, UnsupportedSetting
from tasks.options import check_options as check_component_options

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
        """The method's name in files: ``learner-modalities-fusion`` (``none`` without a fusion)."""
        return f"{self.learner}-{'+'.join(self.modalities)}-{self.fusion or 'none'}"

    @classmethod
    def from_row(cls, learner: str, modalities: str, fusion: str) -> Method:
        """The method of a row of ``rows.jsonl`` (``modalities`` joined by ``+``, fusion ``"none"``)."""
        return cls(learner, tuple(modalities.split("+")), None if fusion == "none" else fusion)


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


def check_options(cfg: ExperimentConfig) -> None:
    """Fail fast, before any work, on an unknown option or a wrong type for any component
    (:func:`tasks.options.check_options`: one way for learners, fusions, backbones, text encoders, datasets)."""
    checks = [("backbone", cfg.backbone, BACKBONES.get(cfg.backbone), cfg.backbone_options, "backbone_options",
               ("image_shape",)),
              ("text encoder", cfg.text_encoder, TEXT_ENCODERS.get(cfg.text_encoder), cfg.text_encoder_options,
               "text_encoder_options", ("corpus",)),
              ("dataset", cfg.dataset, DATASETS.get(cfg.dataset), cfg.dataset_options, "dataset_options",
               ("data_root",))]
    checks += [("fusion", name, FUSIONS.get(name), options, f"fusion_options.{name}", ("in_dims",))
               for name, options in cfg.fusion_options.items()]
    checks += [("learner", name, LEARNERS.get(name), options, f"learner_options.{name}", ())
               for name, options in cfg.learner_options.items()]
    for kind, name, component, options, where, supplied in checks:
        if not isinstance(options, dict):
            raise BenchmarkError(f"{where}: expected a mapping of option names to values, got {options!r}")
        check_component_options(kind, name, component, options, where, supplied)


def fit_to_captions(methods: list[Method], setting: TaskSetting, dataset,
                    name: str) -> tuple[list[Method], TaskSetting]:
    """Without captions, items show images only: drop item text from the task and skip text methods.

    Args:
        dataset: the loaded :class:`~tasks.datasets.FewShotDataset`; name: its registry name (for messages).

    Returns:
        The methods that can run and the task setting.

    Raises:
        UnsupportedSetting: every method needs item text the dataset does not have.
    """
    if dataset.captions is not None:
        return methods, setting
    if "text" in setting.support or "text" in setting.query:
        log.info("dataset %r has no instance-level text: episodes show images only (class text stays "
                 "available to learners such as am3)", name)
        setting = TaskSetting(("image",), ("image",))
    kept = [m for m in methods if "text" not in m.modalities]
    for method in methods:
        if method not in kept:
            log.warning("skipping %s: dataset %r has no captions for the item text it needs", method.label, name)
    if not kept:
        raise UnsupportedSetting(
            f"dataset {name!r} has no instance-level text, and every requested method needs it; "
            "use --modalities image (with a class-text learner such as am3 for image+class text)"
        )
    return kept, setting
