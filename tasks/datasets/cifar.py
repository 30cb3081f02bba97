"""``cifarfs`` and ``fc100``: few-shot splits of CIFAR-100 (as torchvision downloads it).

Layout under ``--data-root``: ``cifar-100-python/{train,test,meta}`` (the
pickles of https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz). Both
splits use all 600 images of each class (train and test pickles together).

``cifarfs``: Bertinetto et al. (2019) split, 64 / 16 / 20 classes.
``fc100``: Oreshkin et al. (2018) split by super-class, 12 / 4 / 4 super-classes
(60 / 20 / 20 classes). Split lists: ``tasks/data/{cifar_fs,fc100}/*.json``
(copies shipped in the ``torchmeta`` wheel, MIT).

Class text: ``"<class>, a kind of <super-class>"`` (e.g. ``"maple tree, a kind of
trees"``); no captions.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tasks.datasets import safepickle
from tasks.datasets.base import DATASETS, FewShotDataset
from tasks.datasets.imagecache import (
    cached_array, channel_stats, decode_image, file_key, missing_classes_error, package_data, require_dir,
)
from tasks.errors import BenchmarkError

LAYOUT = "  cifar-100-python/train, cifar-100-python/test, cifar-100-python/meta  (python pickles)"
HOW = ("rerun with --download (uses torchvision.datasets.CIFAR100, md5-checked), or download "
       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it into <data-root>.")


def _unpickle(path: Path) -> dict:
    try:
        return safepickle.load(path, "CIFAR-100")  # only numpy arrays and plain values: a crafted file runs no code
    except FileNotFoundError:
        raise BenchmarkError(f"CIFAR-100: {path} is missing. Expected layout:\n{LAYOUT}\n{HOW}") from None


def load_cifar100(data_root: str | None, download: bool, image_size: int, dataset: str):
    """All 60000 CIFAR-100 images ``[N, 3, S, S]``, fine and coarse labels, fine and coarse names."""
    if data_root is None:
        raise BenchmarkError(f"{dataset} needs --data-root, the folder holding:\n{LAYOUT}\n{HOW}")
    root = Path(data_root).expanduser()
    if download and not (root / "cifar-100-python" / "meta").is_file():
        from torchvision.datasets import CIFAR100

        CIFAR100(str(root), train=True, download=True)
    folder = require_dir(root / "cifar-100-python", dataset, LAYOUT, HOW)
    meta = _unpickle(folder / "meta")
    parts = [folder / "train", folder / "test"]
    loaded = [_unpickle(p) for p in parts]
    fine = np.concatenate([np.asarray(d["fine_labels"], dtype=np.int64) for d in loaded])
    coarse = np.concatenate([np.asarray(d["coarse_labels"], dtype=np.int64) for d in loaded])

    def build() -> np.ndarray:
        raw = np.concatenate([np.asarray(d["data"], dtype=np.uint8) for d in loaded]).reshape(-1, 3, 32, 32)
        if image_size == 32:
            return raw
        from PIL import Image

        return np.stack([decode_image(Image.fromarray(a.transpose(1, 2, 0)), (image_size, image_size), "RGB")
                         for a in raw])

    images = cached_array(f"cifar100-{image_size}", {"files": file_key(parts), "size": image_size}, build)
    return images, fine, coarse, list(meta["fine_label_names"]), list(meta["coarse_label_names"]), folder


def _make(name: str, images, fine, coarse, fine_names, coarse_names, split_classes: dict[str, list[int]], folder):
    coarse_of = {int(f): int(c) for f, c in zip(fine, coarse)}
    used = [c for s in ("train", "val", "test") for c in split_classes[s]]
    new = {c: i for i, c in enumerate(used)}
    keep = np.isin(fine, used)
    labels = np.array([new[int(c)] for c in fine[keep]], dtype=np.int64)
    kept = images[keep] if not keep.all() else images
    text = lambda c: f"{fine_names[c].replace('_', ' ')}, a kind of {coarse_names[coarse_of[c]].replace('_', ' ')}"  # noqa: E731
    mean, std = channel_stats(images)
    return FewShotDataset(
        name=name, images=kept, labels=labels, class_names=[fine_names[c] for c in used],
        splits={s: np.array([new[c] for c in split_classes[s]], dtype=np.int64) for s in split_classes},
        captions=None, class_texts=[text(c) for c in used], mean=mean, std=std,
        info={"root": str(folder), "super_classes": [coarse_names[coarse_of[c]] for c in used]},
    )


@DATASETS.register("cifarfs")
class CifarFS:
    """CIFAR-FS (Bertinetto et al. 2019): CIFAR-100, 64/16/20 classes, 600 images each, 32x32 RGB."""

    @staticmethod
    def load(data_root: str | None = None, download: bool = False, image_size: int = 32) -> FewShotDataset:
        """Read ``cifar-100-python`` under ``data_root`` with the CIFAR-FS class split."""
        images, fine, coarse, fine_names, coarse_names, folder = load_cifar100(data_root, download, image_size, "cifarfs")
        index = {n: i for i, n in enumerate(fine_names)}
        splits = {}
        for s in ("train", "val", "test"):
            pairs = json.loads(package_data("cifar_fs", f"{s}.json").read_text())
            missing = [f for _, f in pairs if f not in index]
            if missing:
                raise missing_classes_error("cifarfs", f"tasks/data/cifar_fs/{s}.json", missing, folder / "meta")
            splits[s] = [index[f] for _, f in pairs]
        return _make("cifarfs", images, fine, coarse, fine_names, coarse_names, splits, folder)


@DATASETS.register("fc100")
class FC100:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by super-class, 12/4/4 super-classes (60/20/20 classes)."""

    @staticmethod
    def load(data_root: str | None = None, download: bool = False, image_size: int = 32) -> FewShotDataset:
        """Read ``cifar-100-python`` under ``data_root`` with the FC100 super-class split."""
        images, fine, coarse, fine_names, coarse_names, folder = load_cifar100(data_root, download, image_size, "fc100")
        cindex = {n: i for i, n in enumerate(coarse_names)}
        members: dict[int, list[int]] = {}
        for f, c in sorted({(int(f), int(c)) for f, c in zip(fine, coarse)}):
            members.setdefault(c, []).append(f)
        splits = {}
        for s in ("train", "val", "test"):
            supers = json.loads(package_data("fc100", f"{s}.json").read_text())
            missing = [c for c in supers if c not in cindex]
            if missing:
                raise missing_classes_error("fc100", f"tasks/data/fc100/{s}.json", missing, folder / "meta")
            splits[s] = [f for c in supers for f in members.get(cindex[c], [])]
        return _make("fc100", images, fine, coarse, fine_names, coarse_names, splits, folder)
