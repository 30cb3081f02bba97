"""``tieredimagenet``: tieredImageNet (Ren et al. 2018) with WordNet class text.

Class text comes from WordNet 3.0 (see :mod:`tasks.datasets.imagenet`), optionally followed by the
class's super-category. Moved out of :mod:`tasks.datasets.imagenet` to keep both modules short.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from tasks.datasets import safepickle
from tasks.datasets.base import DATASETS, FewShotDataset
from tasks.datasets.imagecache import (
    cached_array, channel_stats, decode_files, decode_image, file_key, list_images, missing_classes_error,
    package_data, unique_names, wordnet_synsets, wordnet_text,
)
from tasks.datasets.imagenet import SPLIT_NAMES
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)


TIERED_LAYOUT = (
    "  either the Ren et al. (2018) pickles: tiered-imagenet/{train,val,test}_images_png.pkl and "
    "{train,val,test}_labels.pkl\n"
    "  (or {split}_images.npz with an 'images' array instead of the png pickle),\n"
    "  or one folder per class: tiered-imagenet/{train,val,test}/<wnid>/*.jpg"
)
TIERED_HOW = ("tieredImageNet has no official stable download URL: build it from ImageNet with "
              "https://github.com/renmengye/few-shot-ssl-public (or yaoyao-liu/tiered-imagenet-tools), "
              "or use a copy of the published pickles, in <data-root>/tiered-imagenet/.")


def _tiered_split(split: str) -> list[tuple[str, str]]:
    with package_data("tieredimagenet", f"{split}.csv").open(newline="") as f:
        return [(r[0].strip(), r[1].strip()) for r in csv.reader(f) if r]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _load_pickle(path: Path):
    try:
        return safepickle.load(path, "tieredimagenet")  # only numpy arrays and plain values: runs no code
    except FileNotFoundError:
        raise BenchmarkError(f"tieredimagenet: {path} is missing") from None


@DATASETS.register("tieredimagenet")
class TieredImageNet:
    """tieredImageNet (Ren et al. 2018): 351/97/160 classes from 20/6/8 super-categories, 84x84 RGB, WordNet text."""

    @staticmethod
    def load(data_root: str | None = None, download: bool = False, image_size: int = 84,
             resample: str = "lanczos", super_text: bool = True) -> FewShotDataset:
        """Read tieredImageNet under ``data_root`` (or ``data_root/tiered-imagenet``).

        Args:
            data_root: folder of the pickles or class folders (see ``TIERED_LAYOUT``), or its parent.
            download: not available (no stable public URL): raises with instructions if data is missing.
            image_size: side of the square RGB images.
            resample: PIL resampling filter for resizing.
            super_text: append the super-category (``"; a kind of <category>"``) to the class text.
        """
        if data_root is None:
            raise BenchmarkError(f"tieredimagenet needs --data-root, the folder holding:\n{TIERED_LAYOUT}\n{TIERED_HOW}")
        data_root = Path(data_root).expanduser()
        root = None
        for c in (data_root / "tiered-imagenet", data_root / "tieredImageNet", data_root / "tiered_imagenet", data_root):
            if all((c / f"{s}_labels.pkl").is_file() or (c / s).is_dir() for s in SPLIT_NAMES):
                root = c
                break
        if root is None:
            if download:
                raise BenchmarkError(f"tieredimagenet: --download is not available. {TIERED_HOW}")
            raise BenchmarkError(f"tieredimagenet: no tieredImageNet found under {data_root}.\n"
                                 f"Expected layout:\n{TIERED_LAYOUT}\nHow to get it: {TIERED_HOW}")
        synsets = wordnet_synsets()
        published = {s: _tiered_split(s) for s in SPLIT_NAMES}
        super_of = {w: g for rows in published.values() for w, g in rows}
        blocks, labels, wnids, splits = [], [], [], {}
        for split in SPLIT_NAMES:
            if (root / f"{split}_labels.pkl").is_file():
                imgs, y, names = TieredImageNet._read_pickles(root, split, image_size, resample, published[split], synsets)
            else:
                imgs, y, names = TieredImageNet._read_folders(root, split, image_size, resample, published[split])
            splits[split] = np.arange(len(wnids), len(wnids) + len(names), dtype=np.int64)
            labels.append(np.asarray(y, dtype=np.int64) + len(wnids))
            wnids.extend(names)
            blocks.append(imgs)
        images = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        names, texts = [], []
        for w in wnids:
            name, text = wordnet_text(w, synsets) if w in synsets else (w, w)
            if super_text and w in super_of and super_of[w] in synsets:
                text += f"; a kind of {synsets[super_of[w]]['names'][0]}"
            names.append(name)
            texts.append(text)
        mean, std = channel_stats(images)
        return FewShotDataset(
            name="tieredimagenet", images=images, labels=np.concatenate(labels), class_names=unique_names(names, wnids),
            splits=splits, captions=None, class_texts=texts, mean=mean, std=std,
            info={"root": str(root), "wnids": wnids, "super_categories": [super_of.get(w) for w in wnids],
                  "image_size": image_size},
        )

    @staticmethod
    def _read_folders(root: Path, split: str, size: int, resample: str, published: list[tuple[str, str]]):
        folder = root / split
        present = {p.name for p in folder.iterdir() if p.is_dir()}
        expected = [w for w, _ in published]
        missing = [w for w in expected if w not in present]
        if missing and len(missing) < len(expected):
            raise missing_classes_error("tieredimagenet", f"tasks/data/tieredimagenet/{split}.csv", missing, folder)
        classes = expected if not missing else sorted(present)  # a custom folder split: use what is there
        if missing:
            log.warning("tieredimagenet: %s holds none of the published %s classes; using its %d folders as the split",
                        folder, split, len(classes))
        files, y = [], []
        for i, w in enumerate(classes):
            imgs = list_images(folder / w)
            files.extend(imgs)
            y.extend([i] * len(imgs))
        return decode_files(f"tieredimagenet-{split}-{size}", files, size, "RGB", resample), y, classes

    @staticmethod
    def _read_pickles(root: Path, split: str, size: int, resample: str, published: list[tuple[str, str]], synsets):
        label_path = root / f"{split}_labels.pkl"
        meta = _load_pickle(label_path)
        meta = {_text(k): v for k, v in meta.items()}
        try:
            y = np.asarray(meta["label_specific"], dtype=np.int64)
            strs = [_text(s) for s in meta["label_specific_str"]]
        except KeyError as err:
            raise BenchmarkError(f"tieredimagenet: {label_path} has no key {err}; expected label_specific and "
                                 "label_specific_str (Ren et al. format)") from None
        # label_specific_str holds wnids or ImageNet class-name strings: map names back to wnids.
        by_text = {}
        for w, _ in published:
            if w in synsets:
                by_text[", ".join(synsets[w]["names"]).lower()] = w
                by_text.setdefault(synsets[w]["names"][0].lower(), w)
        names = [s if s.startswith("n") and s[1:].isdigit() else by_text.get(s.lower(), by_text.get(
            s.split(",")[0].strip().lower(), s)) for s in strs]
        png = root / f"{split}_images_png.pkl"
        npz = root / f"{split}_images.npz"
        if npz.is_file():
            key = {"files": file_key([npz]), "size": size, "resample": resample}

            def build() -> np.ndarray:
                try:
                    with np.load(npz, encoding="latin1") as z:
                        arr = z["images"]
                except (OSError, ValueError, KeyError) as err:
                    raise BenchmarkError(f"tieredimagenet: cannot read 'images' from {npz}: {err}") from None
                if arr.ndim != 4 or arr.shape[-1] != 3:
                    raise BenchmarkError(f"tieredimagenet: {npz} 'images' should be [N, H, W, 3]; got {arr.shape}")
                arr = arr.transpose(0, 3, 1, 2)
                if arr.shape[2:] != (size, size):
                    arr = np.stack([decode_image(_pil(a), (size, size), "RGB", resample, name=f"{npz}[{i}]")
                                    for i, a in enumerate(arr)])
                return np.ascontiguousarray(arr, dtype=np.uint8)
        elif png.is_file():
            key = {"files": file_key([png]), "size": size, "resample": resample}

            def build() -> np.ndarray:
                encoded = _load_pickle(png)
                out = np.empty((len(encoded), 3, size, size), dtype=np.uint8)
                for i, b in enumerate(encoded):
                    out[i] = decode_image(np.asarray(b, dtype=np.uint8).tobytes(), (size, size), "RGB", resample,
                                          name=f"{png} item {i}")
                return out
        else:
            raise BenchmarkError(f"tieredimagenet: {label_path} has no images beside it: expected {png.name} or {npz.name}")
        images = cached_array(f"tieredimagenet-{split}-{size}", key, build)
        if len(images) != len(y):
            raise BenchmarkError(f"tieredimagenet: {len(images)} images but {len(y)} labels in {label_path}")
        return images, y, names


def _pil(chw: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))


__all__ = ["TieredImageNet"]
