"""Episodes: what one few-shot task is (:class:`EpisodeSpec`) and its loaded tensors (:class:`Episode`).

Describing an episode (which classes, which items) is separate from loading
it, so a fixed test manifest is just a list of specs.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tasks.errors import BenchmarkError, UnsupportedSetting

MODALITIES = ("image", "text")


def parse_modalities(text: str | tuple[str, ...] | list[str], what: str = "modalities") -> tuple[str, ...]:
    """Parse ``"image+text"`` (or a sequence) into a sorted tuple of known modality names."""
    names = text.split("+") if isinstance(text, str) else list(text)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in MODALITIES]
    if unknown or not names:
        raise BenchmarkError(
            f"{what}: {text!r} is not a modality setting; use names from {MODALITIES} joined by '+', "
            "e.g. 'image', 'text' or 'image+text'"
        )
    return tuple(m for m in MODALITIES if m in names)


@dataclass(frozen=True)
class TaskSetting:
    """Which modalities each side of an episode shows (part of the task, recorded with results)."""

    support: tuple[str, ...] = ("image", "text")
    query: tuple[str, ...] = ("image", "text")

    def describe(self) -> str:
        return f"support={'+'.join(self.support)},query={'+'.join(self.query)}"


@dataclass(frozen=True)
class EpisodeSpec:
    """Which classes and items make one episode (no tensors).

    Attributes:
        class_ids: global class index of each of the N ways, in label order.
        support: item indices ``[N, K]``; row ``i`` holds the support items of class ``i``.
        query: item indices, row ``i`` the query items of class ``i``: ``[N, Q]`` for sampled
            episodes; rows of an episode file may differ in length, some empty (one-shot trials).
        episode_id: position in its manifest (or training step).
    """

    class_ids: tuple[int, ...]
    support: tuple[tuple[int, ...], ...]
    query: tuple[tuple[int, ...], ...]
    episode_id: int = 0

    @property
    def n_way(self) -> int:
        return len(self.class_ids)

    @property
    def n_shot(self) -> int:
        return len(self.support[0])

    @property
    def n_query(self) -> int | None:
        """Queries per class; ``None`` when the classes hold different numbers (see :attr:`query_counts`)."""
        counts = set(self.query_counts)
        return counts.pop() if len(counts) == 1 else None

    @property
    def query_counts(self) -> tuple[int, ...]:
        """Query items of each class ``[N]``."""
        return tuple(len(row) for row in self.query)

    @property
    def n_queries(self) -> int:
        """Query items in all."""
        return sum(self.query_counts)

    def to_json(self) -> dict:
        return {"id": self.episode_id, "classes": list(self.class_ids),
                "support": [list(r) for r in self.support], "query": [list(r) for r in self.query]}

    @classmethod
    def from_json(cls, data: dict) -> "EpisodeSpec":
        return cls(class_ids=tuple(data["classes"]), support=tuple(tuple(r) for r in data["support"]),
                   query=tuple(tuple(r) for r in data["query"]), episode_id=int(data["id"]))


@dataclass(frozen=True)
class Episode:
    """One loaded N-way K-shot Q-query episode.

    Modalities are looked up by name. Items are ordered class-major: the
    support labels are ``[0]*K + [1]*K + ...``, likewise the query labels (with each
    class's own count when the classes hold different numbers of queries: ``Q`` below is
    then the episode's total).

    Attributes:
        support: modality -> batch; ``"image"`` is float ``[N*K, C, H, W]``, ``"text"`` is the
            text encoder's prepared input ``[N*K, ...]`` (token ids or frozen features).
        support_labels: int64 ``[N*K]`` in ``0..N-1``.
        query: modality -> batch ``[N*Q, ...]``.
        query_labels: int64 ``[N*Q]``.
        class_ids: int64 ``[N]``, global class index of each way.
        class_text: prepared class-level text ``[N, ...]`` or ``None``.
        episode_id: position in the manifest.
    """

    support: dict[str, Tensor]
    support_labels: Tensor
    query: dict[str, Tensor]
    query_labels: Tensor
    class_ids: Tensor
    class_text: Tensor | None = None
    episode_id: int = 0

    @property
    def n_way(self) -> int:
        return len(self.class_ids)

    def to(self, device: torch.device | str) -> "Episode":
        move = lambda d: {k: v.to(device, non_blocking=True) for k, v in d.items()}  # noqa: E731
        return Episode(
            support=move(self.support), support_labels=self.support_labels.to(device),
            query=move(self.query), query_labels=self.query_labels.to(device),
            class_ids=self.class_ids.to(device),
            class_text=None if self.class_text is None else self.class_text.to(device),
            episode_id=self.episode_id,
        )


class EpisodeLoader:
    """Turns :class:`EpisodeSpec` into :class:`Episode` by indexing preloaded tensors.

    Args:
        images: uint8 ``[n_items, C, H, W]``.
        mean, std: per-channel normalisation (0..1 scale).
        item_text: prepared instance text ``[n_items, ...]`` or ``None`` if the dataset has no captions.
        class_text: prepared class text ``[n_classes, ...]`` or ``None``.
        setting: which modalities the support and query sides show.
        image_features: precomputed features of a frozen image encoder ``[n_items, D]``
            (see :mod:`tasks.features`); when given, the ``"image"`` input is these rows
            instead of normalised pixels.
    """

    def __init__(self, images: np.ndarray | Tensor, mean, std, item_text: Tensor | None = None,
                 class_text: Tensor | None = None, setting: TaskSetting = TaskSetting(),
                 image_features: Tensor | None = None) -> None:
        with warnings.catch_warnings():  # a read-only memory map is fine: images are only ever indexed
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.images = torch.as_tensor(images)
        self.image_features = image_features
        c = self.images.shape[1]
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, c, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(1, c, 1, 1)
        self.item_text = item_text
        self.class_text = class_text
        for side in (setting.support, setting.query):
            if "text" in side and item_text is None:
                raise UnsupportedSetting(
                    "this dataset has no instance-level text (captions), so episodes cannot show "
                    f"'text' on their items ({setting.describe()}); use image-only sides and class text"
                )
        self.setting = setting

    def side(self, items: Tensor, modalities: tuple[str, ...]) -> dict[str, Tensor]:
        """Inputs of the given items for the listed modalities: modality -> ``[len(items), ...]``."""
        # index_select, not tensor[items]: on a CPU shared with other processes, advanced indexing's
        # parallel region cost milliseconds per call (docs/speed.md); index_select gathers in place
        items = torch.as_tensor(items, dtype=torch.int64)  # lists and NumPy arrays too
        out: dict[str, Tensor] = {}
        if "image" in modalities and self.image_features is not None:
            out["image"] = self.image_features.index_select(0, items)
        elif "image" in modalities:
            out["image"] = self.images.index_select(0, items).float().mul_(self.scale).sub_(self.shift)
        if "text" in modalities:
            out["text"] = self.item_text.index_select(0, items)  # type: ignore[union-attr]
        return out

    def load_labels(self, spec: EpisodeSpec) -> Episode:
        """The episode's labels, class ids and class text, with empty modality dicts."""
        classes = torch.as_tensor(spec.class_ids, dtype=torch.int64)
        return Episode(
            support={}, support_labels=class_labels(spec.support), query={}, query_labels=class_labels(spec.query),
            class_ids=classes, class_text=None if self.class_text is None else self.class_text[classes],
            episode_id=spec.episode_id,
        )

    def load(self, spec: EpisodeSpec) -> Episode:
        support, query = torch.as_tensor(flat_items(spec.support)), torch.as_tensor(flat_items(spec.query))
        episode = self.load_labels(spec)
        episode.support.update(self.side(support, self.setting.support))
        episode.query.update(self.side(query, self.setting.query))
        return episode


def flat_items(rows: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Item indices of per-class rows, class-major, int64 ``[sum of row lengths]`` (rows may differ in length)."""
    return np.fromiter((i for row in rows for i in row), dtype=np.int64)


def class_labels(rows: tuple[tuple, ...]) -> Tensor:
    """Label ``i`` repeated once per item of row ``i``: int64 ``[sum of row lengths]``."""
    counts = [len(row) for row in rows]
    if len(set(counts)) == 1:  # the usual N-way K-shot episode
        return torch.arange(len(rows)).repeat_interleave(counts[0])
    return torch.arange(len(rows)).repeat_interleave(torch.tensor(counts))
