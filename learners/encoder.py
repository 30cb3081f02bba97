"""Encoders -> fusion: the feature extractor every learner is built on."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from learners.registry import BACKBONES, FUSIONS
from learners.text import TextEncoder
from tasks.episode import TaskSetting
from tasks.errors import BenchmarkError, UnsupportedSetting


@dataclass
class ModelSpec:
    """What the harness tells a learner to build.

    Attributes:
        modalities: the inputs the learner uses, e.g. ``("image",)`` or ``("image", "text")``.
        setting: which modalities the support and query sides of an episode show.
        image_shape: ``(C, H, W)``.
        backbone: registered image backbone name, with ``backbone_options``.
        text_encoder: a built :class:`TextEncoder`, or ``None`` when text is unused.
        fusion: registered fusion name (``None`` for a single modality), with ``fusion_options``.
        n_train_classes: number of meta-train classes (for learners that pre-train a classifier).
        train_class_ids: the global class ids of the meta-train split, in the order of the
            classifier's outputs (``n_train_classes`` of them); empty means ``0..n_train_classes-1``.
    """

    modalities: tuple[str, ...]
    setting: TaskSetting
    image_shape: tuple[int, int, int]
    backbone: str = "conv4"
    backbone_options: dict = field(default_factory=dict)
    text_encoder: TextEncoder | None = None
    fusion: str | None = None
    fusion_options: dict = field(default_factory=dict)
    n_train_classes: int = 0
    train_class_ids: tuple[int, ...] = ()

    def build_encoder(self) -> "MultimodalEncoder":
        encoders: dict[str, nn.Module] = {}
        if "image" in self.modalities:
            encoders["image"] = BACKBONES.get(self.backbone)(self.image_shape, **self.backbone_options)
        if "text" in self.modalities:
            if self.text_encoder is None:
                raise BenchmarkError("a text modality was asked for but no text encoder was given")
            encoders["text"] = self.text_encoder
        fusion = None
        if len(encoders) > 1:
            if self.fusion is None:
                raise BenchmarkError(f"modalities {'+'.join(self.modalities)} need a fusion (e.g. concat, attention)")
            fusion = FUSIONS.get(self.fusion)({m: e.out_dim for m, e in encoders.items()}, **self.fusion_options)
        elif self.fusion is not None:
            raise UnsupportedSetting(
                f"fusion {self.fusion!r} was asked for with the single modality {self.modalities[0]!r}; "
                "a fusion needs image+text"
            )
        encoder = MultimodalEncoder(encoders, fusion)
        encoder.check_setting(self.setting)
        return encoder


class MultimodalEncoder(nn.Module):
    """Per-modality encoders followed by an optional fusion.

    ``forward(inputs)`` takes modality -> batch and returns features ``[B, out_dim]``.
    Inputs for modalities the encoder does not use are ignored.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], fusion: nn.Module | None = None) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(dict(encoders))
        self.fusion = fusion
        self.out_dim = fusion.out_dim if fusion is not None else next(iter(self.encoders.values())).out_dim

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders)

    def check_setting(self, setting: TaskSetting) -> None:
        """Raise :class:`UnsupportedSetting` if a side of the episode lacks what this encoder needs."""
        for side, shown in (("support", setting.support), ("query", setting.query)):
            present = [m for m in self.modalities if m in shown]
            missing = [m for m in self.modalities if m not in shown]
            if not present:
                raise UnsupportedSetting(
                    f"the {side} side shows {'+'.join(shown)} but this model uses only {'+'.join(self.modalities)}"
                )
            if missing and (self.fusion is None or not self.fusion.accepts(present)):
                name = getattr(self.fusion, "registry_name", None)
                raise UnsupportedSetting(
                    f"the {side} side shows only {'+'.join(shown)} but fusion {name!r} cannot fuse items "
                    f"without {'+'.join(missing)}; use a fusion that handles a missing modality (e.g. "
                    f"--fusions attention) or show {'+'.join(self.modalities)} on that side"
                )

    def compare(self, fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
        """Logits of features ``x [B, out_dim]`` against class representations ``y [N, out_dim]``.

        Metric learners call this instead of ``fn(x, y)`` so that late fusion can
        score each modality on its own (see :mod:`learners.fusions`).
        """
        return fn(x, y) if self.fusion is None else self.fusion.compare(fn, x, y)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        features = {m: enc(inputs[m]) for m, enc in self.encoders.items() if m in inputs}
        if self.fusion is None:
            if not features:
                raise UnsupportedSetting(f"no input for the model's modality {self.modalities}")
            return next(iter(features.values()))
        return self.fusion(features)
