"""Decode images once: shared helpers of the real-dataset loaders.

Every loader turns its files into one uint8 array ``[N, C, H, W]``. Decoding
and resizing happen once per dataset and preprocessing: the array is written
to ``tasks.paths.cache_dir() / "decoded"`` as an ``.npy`` file and later loads
memory-map it (``np.load(mmap_mode="r")``), so a second load costs a few stats
and sampling an episode costs no decoding at all.

The cache key covers the source files (path, size and modification time of
each), the preprocessing (size, colour mode, resampling, crops) and
:data:`CACHE_VERSION`; change any of them and the images are decoded again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from tasks.atomic import atomic_write, atomic_write_text
from tasks.errors import BenchmarkError
from tasks.paths import cache_dir

log = logging.getLogger(__name__)

CACHE_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def package_data(*parts: str) -> Path:
    """Path of a file shipped under ``tasks/data`` (split lists, WordNet text)."""
    return Path(str(resources.files("tasks").joinpath("data", *parts)))


def wordnet_synsets() -> dict[str, dict]:
    """wnid -> ``{"names": [...], "gloss": str}`` from the shipped WordNet 3.0 extract."""
    return json.loads(package_data("wordnet_classes.json").read_text())["synsets"]


def wordnet_text(wnid: str, synsets: dict[str, dict] | None = None) -> tuple[str, str]:
    """(short name, class text) of ``wnid``: first lemma, and ``"lemmas: gloss"``.

    A wnid missing from the shipped file gets itself as name and text (with a warning).
    """
    synsets = wordnet_synsets() if synsets is None else synsets
    entry = synsets.get(wnid)
    if entry is None:
        log.warning("wnid %s has no entry in tasks/data/wordnet_classes.json; its class text is the wnid", wnid)
        return wnid, wnid
    return entry["names"][0], f"{', '.join(entry['names'])}: {entry['gloss']}"


def unique_names(names: list[str], keys: list[str]) -> list[str]:
    """Make display names unique by appending the key (e.g. the wnid) to duplicates."""
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return [f"{n} ({k})" if seen[n] > 1 else n for n, k in zip(names, keys)]


def require_dir(path: Path, dataset: str, layout: str, how: str) -> Path:
    """Return ``path`` if it is a folder, else raise a :class:`BenchmarkError` describing the layout."""
    if not path.is_dir():
        raise BenchmarkError(
            f"{dataset}: expected the folder {path} (not found).\nExpected layout under --data-root:\n"
            f"{layout}\nHow to get it: {how}"
        )
    return path


def missing_classes_error(dataset: str, split_file: str, missing: Sequence[str], where: Path) -> BenchmarkError:
    """Error for a split list naming classes that are not on disk."""
    shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
    return BenchmarkError(
        f"{dataset}: the split list {split_file} names {len(missing)} classes that are not in {where}: "
        f"{shown}. Is the download complete, and is --data-root the folder of the official layout?"
    )


def _to_array(img, size: tuple[int, int], mode: str, resample: str, box=None) -> np.ndarray:
    from PIL import Image

    img = img.convert(mode)
    if box is not None:
        img = img.crop(tuple(int(round(v)) for v in box))
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), getattr(Image.Resampling, resample.upper()))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_image(source, size: tuple[int, int], mode: str = "RGB", resample: str = "lanczos",
                 box=None, name: str | None = None) -> np.ndarray:
    """Decode one image (path, bytes or PIL image) to uint8 ``[C, H, W]``.

    Raises:
        BenchmarkError: the file is missing, unreadable or not an image (names the file).
    """
    import io

    from PIL import Image, UnidentifiedImageError

    label = name or str(source)
    try:
        if isinstance(source, Image.Image):
            return _to_array(source, size, mode, resample, box)
        if isinstance(source, (bytes, bytearray, np.ndarray)):
            source = io.BytesIO(bytes(source))
        with Image.open(source) as img:
            return _to_array(img, size, mode, resample, box)
    except FileNotFoundError:
        raise BenchmarkError(f"image file not found: {label}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise BenchmarkError(f"cannot decode image {label}: {err} (is the file corrupt or truncated?)") from None


def file_key(paths: Sequence[Path]) -> str:
    """Cheap fingerprint of files: path, size and mtime of each (no reading)."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise BenchmarkError(f"image file not found: {p}") from None
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_array(tag: str, key: dict, build: Callable[[], np.ndarray]) -> np.ndarray:
    """Return the array cached under ``tag`` + ``key``, building and saving it on a miss.

    Args:
        tag: readable prefix of the cache file name (e.g. ``omniglot-28``).
        key: everything the array depends on (JSON-serialisable).
        build: computes the uint8 array ``[N, C, H, W]``.

    Returns:
        A read-only memory-mapped array (or the built array if the cache cannot be written).
    """
    digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **key}, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / "decoded" / f"{tag}-{digest}.npy"
    if path.exists():
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            log.warning("decoded-image cache %s is unreadable (%s); decoding again", path, err)
    start = time.perf_counter()
    array = build()
    log.info("decoded %d images for %s in %.1f s", len(array), tag, time.perf_counter() - start)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.save(f, array))
        return np.load(path, mmap_mode="r")
    except OSError as err:
        log.warning("could not cache decoded images in %s (%s); they will be decoded again next time", path, err)
        return array


def decode_files(tag: str, paths: Sequence[Path], size: int | tuple[int, int], mode: str = "RGB",
                 resample: str = "lanczos", boxes: Sequence | None = None) -> np.ndarray:
    """Decode ``paths`` into uint8 ``[N, C, H, W]`` once, cached on disk (see module docstring)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    key = {"files": file_key(paths), "n": len(paths), "size": hw, "mode": mode, "resample": resample,
           "boxes": hashlib.sha256(json.dumps([list(map(float, b)) for b in boxes]).encode()).hexdigest()
           if boxes is not None else None}

    def build() -> np.ndarray:
        out = np.empty((len(paths), 1 if mode == "L" else 3, *hw), dtype=np.uint8)
        for i, p in enumerate(paths):
            out[i] = decode_image(p, hw, mode, resample, boxes[i] if boxes is not None else None)
        return out

    return cached_array(tag, key, build)


def channel_stats(images: np.ndarray, max_items: int = 20000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale (from at most ``max_items`` evenly spaced items).

    For a memory-mapped cache file the result is stored beside it (``.stats.json``) and reused.
    """
    sidecar = Path(str(images.filename) + ".stats.json") if isinstance(images, np.memmap) and images.filename else None
    if sidecar is not None and sidecar.exists():
        try:
            stats = json.loads(sidecar.read_text())
            return tuple(stats["mean"]), tuple(stats["std"])
        except (OSError, ValueError, KeyError):
            pass
    step = max(1, len(images) // max_items)
    total = np.zeros(images.shape[1]), np.zeros(images.shape[1])
    count = 0
    for start in range(0, len(images), 1024 * step):
        chunk = np.asarray(images[start:start + 1024 * step:step], dtype=np.float64) / 255.0
        total[0][:] += chunk.sum(axis=(0, 2, 3))
        total[1][:] += (chunk**2).sum(axis=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = total[0] / max(count, 1)
    std = np.sqrt(np.maximum(total[1] / max(count, 1) - mean**2, 0))
    result = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if sidecar is not None:
        try:
            atomic_write_text(sidecar, json.dumps({"mean": result[0], "std": result[1]}))
        except OSError:
            pass
    return result


def seeded_class_split(n_classes: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Split class indices ``0..n_classes-1`` into train/val/test by ``fractions`` with a seeded permutation."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise BenchmarkError(f"split_fractions must be three non-negative numbers (train, val, test), got {fractions}")
    total = float(sum(fractions))
    order = np.random.default_rng(seed).permutation(n_classes)
    n_train = int(round(fractions[0] / total * n_classes))
    n_val = int(round(fractions[1] / total * n_classes))
    return {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train:n_train + n_val]),
            "test": np.sort(order[n_train + n_val:])}


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
