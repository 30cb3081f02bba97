"""The in-memory dataset every loader produces.

A :class:`FewShotDataset` holds every item already decoded and resized, as one
uint8 array, so sampling an episode is pure indexing (no image decoding).
Text is kept as strings; the harness turns it into encoder inputs once.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from tasks.errors import BenchmarkError
from tasks.registry import Registry

DATASETS: Registry = Registry("dataset")

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class FewShotDataset:
    """All items of a few-shot dataset with their class split.

    Attributes:
        name: registry name of the dataset.
        images: uint8 array ``[n_items, channels, height, width]``.
        labels: int64 array ``[n_items]``, global class index in ``0..n_classes-1``.
        class_names: one short name per class.
        splits: split name (``train``/``val``/``test``) -> int64 array of class indices.
        captions: optional instance-level text, one string per item.
        class_texts: optional class-level text (a description), one per class.
        mean, std: per-channel statistics used to normalise images (0..1 scale).
        info: free-form provenance (source folder, split file, generator seed...).
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    splits: dict[str, np.ndarray]
    captions: list[str] | None = None
    class_texts: list[str] | None = None
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray) and not self.images.flags.c_contiguous:
            # one memory layout whatever the source (freshly generated or loaded from a cache): torch
            # kernels may sum in another order for other strides, and numbers must not depend on that
            object.__setattr__(self, "images", np.ascontiguousarray(self.images))
        n = len(self.labels)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or len(self.images) != n:
            raise ValueError(
                f"dataset {self.name!r}: images must be uint8 [n_items, C, H, W] with one "
                f"row per label; got {self.images.dtype} {self.images.shape} for {n} labels"
            )
        if self.captions is not None and len(self.captions) != n:
            raise ValueError(f"dataset {self.name!r}: {len(self.captions)} captions for {n} items")
        if self.class_texts is not None and len(self.class_texts) != self.n_classes:
            raise ValueError(
                f"dataset {self.name!r}: {len(self.class_texts)} class texts for {self.n_classes} classes"
            )
        seen: dict[int, str] = {}
        for split, classes in self.splits.items():
            for c in classes.tolist():
                if c in seen:
                    raise ValueError(
                        f"dataset {self.name!r}: class {self.class_names[c]!r} is in both "
                        f"{seen[c]!r} and {split!r} splits"
                    )
                seen[c] = split

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def modalities(self) -> tuple[str, ...]:
        """Item-level modalities: always ``image``, plus ``text`` with captions."""
        return ("image", "text") if self.captions is not None else ("image",)

    def split_classes(self, split: str) -> np.ndarray:
        """Class indices of ``split``; a clear error for an unknown split."""
        if split not in self.splits:
            raise BenchmarkError(
                f"dataset {self.name!r} has no split {split!r}; it has {sorted(self.splits)}"
            )
        return self.splits[split]

    def items_by_class(self) -> list[np.ndarray]:
        """Item indices of each class, sorted, computed once."""
        cached = self.__dict__.get("_items_by_class")
        if cached is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.searchsorted(self.labels[order], np.arange(self.n_classes + 1))
            cached = [order[bounds[c] : bounds[c + 1]] for c in range(self.n_classes)]
            object.__setattr__(self, "_items_by_class", cached)
        return cached

    def fingerprint(self) -> str:
        """sha256 of the contents (images, labels, text, splits): keys caches and manifests."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            h = hashlib.sha256()
            h.update(self.name.encode())
            h.update(str(self.images.shape).encode())
            h.update(np.ascontiguousarray(self.images).tobytes())
            h.update(self.labels.astype(np.int64).tobytes())
            for text in (self.captions or []) + (self.class_texts or []) + self.class_names:
                h.update(text.encode() + b"\0")
            for split in sorted(self.splits):
                h.update(split.encode() + self.splits[split].astype(np.int64).tobytes())
            cached = h.hexdigest()
            object.__setattr__(self, "_fingerprint", cached)
        return cached
