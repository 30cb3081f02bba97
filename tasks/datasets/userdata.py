"""Users' own data without code: ``imagetext_folder`` (CSV or folders) and ``hf`` (Hugging Face datasets).

``imagetext_folder`` reads, from ``--data-root`` (a folder or a CSV file):

* a CSV (``data.csv``, ``images.csv``, ``labels.csv`` or the only ``*.csv`` in the folder, or
  ``csv=`` option) with an image path column (``image``, ``path``, ``file`` or ``filename``),
  a ``label`` column, and optionally ``caption`` and ``split`` (train/val/test) columns.
  Paths are relative to the CSV's folder;
* or, with no CSV, one folder per class: ``<root>/<label>/<image>`` (optional caption in
  ``<image stem>.txt`` beside each image), or ``<root>/{train,val,test}/<label>/<image>``
  for given splits;
* optionally a class-description file: ``classes.csv`` (columns ``label,description``) or
  ``classes.json`` (``{label: description}``), or ``class_text=`` option.

Without given splits, classes are split by a seeded permutation (``split_fractions``, ``seed``).
Captions are all-or-nothing: if some items lack one the dataset has no captions (with a warning).

``hf`` loads a Hugging Face ``datasets`` dataset by name (``name=``; may download, the
library's cache applies) or from a local path (``--data-root``: a ``save_to_disk`` folder or a
loadable data folder), concatenating all of its splits and splitting by class (seeded) unless
``split_column`` is given. Columns are named by the user: ``image_column``, ``label_column``,
``text_column`` (captions; default: a ``caption`` or else ``text`` column, if there is one) and
``class_text_column``. Which columns (and class-text file) were used is kept in ``FewShotDataset.info``
(``columns``) and recorded in ``run.json``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from tasks.datasets.base import DATASETS, FewShotDataset
from tasks.datasets.imagecache import (
    IMAGE_EXTENSIONS, cached_array, channel_stats, decode_files, decode_image, list_images, seeded_class_split,
)
from tasks.errors import BenchmarkError, suggest

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
LAYOUT = ("  a CSV with columns image,label[,caption][,split] (image paths relative to the CSV), or\n"
          "  <root>/<label>/<image>.jpg [+ <image>.txt caption], or <root>/{train,val,test}/<label>/<image>.jpg;\n"
          "  optional classes.csv (label,description) or classes.json")
IMAGE_COLUMNS = ("image", "path", "file", "filename", "image_path")


def _find_csv(root: Path, name: str | None) -> Path | None:
    if root.is_file():
        return root
    if name:
        path = root / name
        if not path.is_file():
            raise BenchmarkError(f"imagetext_folder: CSV {path} not found")
        return path
    for candidate in ("data.csv", "images.csv", "labels.csv", "captions.csv", "metadata.csv"):
        if (root / candidate).is_file():
            return root / candidate
    csvs = [p for p in root.glob("*.csv") if p.name not in ("classes.csv", "class_descriptions.csv")]
    if len(csvs) > 1:
        raise BenchmarkError(f"imagetext_folder: several CSVs in {root} ({', '.join(p.name for p in csvs)}); "
                             "choose one with --set dataset_options.csv=NAME")
    return csvs[0] if csvs else None


def _read_csv(path: Path, image_column, label_column, caption_column, split_column):
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = list(reader)
    image_column = image_column or next((c for c in IMAGE_COLUMNS if c in columns), None)
    for role, col in (("image", image_column), ("label", label_column)):
        if col is None or col not in columns:
            raise BenchmarkError(f"imagetext_folder: {path} has no {role} column {col!r}; its columns are {columns}."
                                 f"{suggest(str(col), columns)} Name it with --set dataset_options.{role}_column=NAME")
    if caption_column is not None and caption_column not in columns:
        raise BenchmarkError(f"imagetext_folder: {path} has no caption column {caption_column!r}; columns: {columns}")
    caption_column = caption_column or _default_text_column(columns)
    split_column = split_column or ("split" if "split" in columns else None)
    used = {"image": image_column, "label": label_column, "caption": caption_column, "split": split_column}
    files, labels, caps, splits = [], [], [], []
    for i, row in enumerate(rows, start=2):
        if not (row.get(image_column) or "").strip() or not (row.get(label_column) or "").strip():
            raise BenchmarkError(f"imagetext_folder: {path} line {i}: empty image path or label")
        files.append((path.parent / row[image_column].strip()))
        labels.append(row[label_column].strip())
        caps.append((row.get(caption_column) or "").strip() if caption_column else "")
        splits.append((row.get(split_column) or "").strip().lower() if split_column else "")
    return files, labels, caps if caption_column else None, splits if split_column else None, used


def _default_text_column(columns: list[str]) -> str | None:
    """The caption column found without being named: ``caption``, else ``text``."""
    return next((c for c in ("caption", "text") if c in columns), None)


def _read_folders(root: Path):
    files, labels, caps, splits = [], [], [], []
    given = all((root / s).is_dir() for s in ("train", "test"))
    parts = [(s, root / s) for s in SPLIT_NAMES if (root / s).is_dir()] if given else [("", root)]
    for split, folder in parts:
        for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for img in list_images(label_dir):
                files.append(img)
                labels.append(label_dir.name)
                txt = img.with_suffix(".txt")
                caps.append(txt.read_text(errors="replace").strip() if txt.is_file() else "")
                splits.append(split)
    return files, labels, caps, splits if given else None, {"layout": "split folders" if given else "class folders"}


def _class_texts(root: Path, classes: list[str], path: str | None, used: dict | None = None) -> list[str] | None:
    folder = root if root.is_dir() else root.parent
    if path:
        candidate = Path(path) if Path(path).is_absolute() else folder / path
        if not candidate.is_file():
            raise BenchmarkError(f"class description file {candidate} not found")
    else:
        candidate = next((folder / n for n in ("classes.csv", "class_descriptions.csv", "classes.json")
                          if (folder / n).is_file()), None)
        if candidate is None:
            return None
    if used is not None:
        used["class_text"] = str(candidate)
    if candidate.suffix == ".json":
        table = {str(k): str(v) for k, v in json.loads(candidate.read_text()).items()}
    else:
        with candidate.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        if rows and rows[0][:1] == ["label"]:
            rows = rows[1:]
        table = {r[0].strip(): ",".join(r[1:]).strip() for r in rows if r}
    missing = [c for c in classes if c not in table]
    if missing:
        raise BenchmarkError(f"class description file {candidate} has no description for {len(missing)} classes: "
                             f"{', '.join(missing[:10])}")
    return [table[c] for c in classes]


def _splits_from(labels_idx: np.ndarray, item_splits: list[str] | None, n_classes: int, classes: list[str],
                 fractions, seed: int, source: str) -> dict[str, np.ndarray]:
    if item_splits is None or not any(item_splits):
        return seeded_class_split(n_classes, fractions, seed)
    alias = {"training": "train", "validation": "val", "valid": "val", "dev": "val", "testing": "test"}
    split_of: dict[int, str] = {}
    for y, s in zip(labels_idx.tolist(), item_splits):
        s = alias.get(s, s)
        if s not in SPLIT_NAMES:
            raise BenchmarkError(f"{source}: split value {s!r} for class {classes[y]!r}; use train, val or test")
        if split_of.setdefault(y, s) != s:
            raise BenchmarkError(f"{source}: class {classes[y]!r} has items in both {split_of[y]!r} and {s!r}; "
                                 "few-shot splits are by class")
    return {s: np.array(sorted(c for c, v in split_of.items() if v == s), dtype=np.int64) for s in SPLIT_NAMES}


def _build(name, images, label_strs, caps, item_splits, class_text_list, fractions, seed, info, source):
    classes = sorted(set(label_strs))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for c in label_strs], dtype=np.int64)
    if caps is not None and not all(caps):
        log.warning("%s: %d of %d items have no caption; the dataset is image-only (plus class text)",
                    source, sum(not c for c in caps), len(caps))
        caps = None
        if isinstance(info.get("columns"), dict):
            info["columns"]["caption"] = None  # not used after all
    splits = _splits_from(labels, item_splits, len(classes), classes, fractions, seed, source)
    texts = class_text_list(classes) if callable(class_text_list) else class_text_list
    mean, std = channel_stats(images)
    return FewShotDataset(name=name, images=images, labels=labels, class_names=classes, splits=splits,
                          captions=caps, class_texts=texts, mean=mean, std=std, info=info)


@DATASETS.register("imagetext_folder")
class ImageTextFolder:
    """Your own images (+ captions, + class descriptions) from a CSV or one folder per class; no code needed."""

    @staticmethod
    def load(data_root: str | None = None, download: bool = False, csv: str | None = None,
             image_column: str | None = None, label_column: str = "label", caption_column: str | None = None,
             split_column: str | None = None, class_text: str | None = None, image_size: int = 84,
             grayscale: bool = False, split_fractions=(0.6, 0.2, 0.2), seed: int = 0) -> FewShotDataset:
        """Read a user's image-text data (see module docstring for the layouts)."""
        if data_root is None:
            raise BenchmarkError(f"imagetext_folder needs --data-root: a folder or CSV file laid out as\n{LAYOUT}")
        if download:
            raise BenchmarkError("imagetext_folder reads your own files; --download does not apply")
        root = Path(data_root).expanduser()
        if not root.exists():
            raise BenchmarkError(f"imagetext_folder: {root} does not exist. Expected:\n{LAYOUT}")
        table = _find_csv(root, csv)
        if table is not None:
            files, label_strs, caps, item_splits, used = _read_csv(table, image_column, label_column,
                                                                   caption_column, split_column)
        else:
            files, label_strs, caps, item_splits, used = _read_folders(root)
        used["class_text"] = None
        if not files:
            raise BenchmarkError(f"imagetext_folder: no images found in {root}. Expected:\n{LAYOUT}")
        images = decode_files(f"imagetext-{image_size}", files, image_size, "L" if grayscale else "RGB")
        return _build("imagetext_folder", images, label_strs, caps, item_splits,
                      lambda classes: _class_texts(root, classes, class_text, used), split_fractions, seed,
                      {"root": str(root), "csv": str(table) if table else None, "columns": used},
                      f"imagetext_folder {root}")


@DATASETS.register("hf")
class HuggingFace:
    """Any Hugging Face `datasets` dataset (hub name or local/saved path) with user-named image/label/text columns."""

    @staticmethod
    def load(data_root: str | None = None, download: bool = False, name: str | None = None,
             config: str | None = None, hf_splits: list[str] | None = None, image_column: str = "image",
             label_column: str = "label", text_column: str | None = None, class_text_column: str | None = None,
             split_column: str | None = None, image_size: int = 84, grayscale: bool = False,
             split_fractions=(0.6, 0.2, 0.2), seed: int = 0) -> FewShotDataset:
        """Load with ``datasets`` and convert (images decoded once, cached by the dataset's fingerprint).

        Long: finding the source, then mapping its columns, each step with its own error message.
        """
        import datasets as hfds

        if name is None and data_root is None:
            raise BenchmarkError("hf needs a dataset: --set dataset_options.name=<hub name> or --data-root <path>")
        source = name or str(data_root)
        try:
            path = Path(data_root).expanduser() if data_root else None
            if path is not None and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
                                     or (path / "state.json").is_file()):
                ds = hfds.load_from_disk(str(path))
            else:
                ds = hfds.load_dataset(name or str(path), config)
        except (FileNotFoundError, ValueError, ConnectionError) as err:
            raise BenchmarkError(f"hf: cannot load dataset {source!r}: {err}") from None
        if isinstance(ds, hfds.DatasetDict):
            keys = hf_splits or list(ds)
            unknown = [k for k in keys if k not in ds]
            if unknown:
                raise BenchmarkError(f"hf: dataset {source!r} has no split(s) {unknown}; it has {list(ds)}")
            ds = hfds.concatenate_datasets([ds[k] for k in keys])
        columns = ds.column_names
        for role, col in (("image", image_column), ("label", label_column), ("text", text_column),
                          ("class_text", class_text_column), ("split", split_column)):
            if col is not None and col not in columns:
                raise BenchmarkError(f"hf: dataset {source!r} has no {role} column {col!r}; columns: {columns}."
                                     f"{suggest(col, columns)} Set dataset_options.{role}_column")
        text_column = text_column or _default_text_column(columns)  # a caption column, as imagetext_folder finds
        feature = ds.features[label_column]
        raw_labels = ds[label_column]
        label_strs = [feature.int2str(v) if hasattr(feature, "int2str") else str(v) for v in raw_labels]
        size = (image_size, image_size)
        mode = "L" if grayscale else "RGB"
        key = {"hf": ds._fingerprint, "column": image_column, "size": size, "mode": mode, "n": len(ds)}

        def build() -> np.ndarray:
            out = np.empty((len(ds), 1 if grayscale else 3, *size), dtype=np.uint8)
            for i, item in enumerate(ds.select_columns([image_column])):
                img = item[image_column]
                if isinstance(img, dict):
                    img = img.get("bytes") or img.get("path")
                out[i] = decode_image(img, size, mode, name=f"{source} row {i} column {image_column!r}")
            return out

        tag = "hf-" + hashlib.sha256(source.encode()).hexdigest()[:8] + f"-{image_size}"
        images = cached_array(tag, key, build)
        caps = [str(t or "") for t in ds[text_column]] if text_column else None
        item_splits = [str(s).lower() for s in ds[split_column]] if split_column else None

        def class_texts(classes: list[str]) -> list[str] | None:
            if class_text_column is None:
                return None
            table: dict[str, str] = {}
            for label, text in zip(label_strs, ds[class_text_column]):
                table.setdefault(label, str(text))
            return [table[c] for c in classes]

        return _build("hf", images, label_strs, caps, item_splits, class_texts, split_fractions, seed,
                      {"source": source, "fingerprint": ds._fingerprint,
                       "columns": {"image": image_column, "label": label_column, "caption": text_column,
                                   "split": split_column, "class_text": class_text_column}}, f"hf {source}")


__all__ = ["ImageTextFolder", "HuggingFace", "IMAGE_EXTENSIONS", "decode_files"]
