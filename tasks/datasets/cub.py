"""``cub``: Caltech-UCSD Birds-200-2011 with the Chen et al. (2019) split and Reed et al. (2016) captions.

Layout under ``--data-root`` (as distributed)::

    CUB_200_2011/images.txt                 "<image id> <class folder>/<file>.jpg"
    CUB_200_2011/classes.txt                "<class id> <NNN.Species_name>"
    CUB_200_2011/images/<NNN.Species_name>/<file>.jpg
    CUB_200_2011/bounding_boxes.txt         optional, used with crop_bbox=True
    text_c10/<NNN.Species_name>/<file>.txt  optional Reed et al. captions (10 lines per image);
                                            also found as cvpr2016_cub/text_c10 or CUB_200_2011/text_c10

Split: Chen et al. (2019) "A Closer Look at Few-shot Classification", 100 / 50 /
50 classes, from ``tasks/data/cub/*.json`` (torchmeta's copy, MIT). Class
text: the species name. Captions (with ``text_c10``): the ``caption``-th
sentence of each image's file, or all ten joined with ``caption="all"``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from tasks.datasets.base import DATASETS, FewShotDataset
from tasks.datasets.imagecache import channel_stats, decode_files, missing_classes_error, package_data, require_dir
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)

URL = "https://data.caltech.edu/records/65de6-vhp76/files/CUB_200_2011.tgz"
MD5 = "97eceeb196236b17998738112f37df78"
LAYOUT = ("  CUB_200_2011/images.txt, CUB_200_2011/classes.txt, CUB_200_2011/images/<NNN.Species>/<file>.jpg\n"
          "  optional: text_c10/<NNN.Species>/<file>.txt (Reed et al. captions)")
HOW = (f"rerun with --download (fetches {URL}, md5 {MD5}), or download and extract it into <data-root>. "
       "Captions: cvpr2016_cub.tar.gz from https://github.com/reedscot/cvpr2016 (extract text_c10/ into <data-root>).")


def _read_table(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise BenchmarkError(f"cub: {path} is missing. Expected layout:\n{LAYOUT}\nHow to get it: {HOW}")
    return [line.split(maxsplit=1) if "images.txt" in path.name or "classes.txt" in path.name else line.split()
            for line in path.read_text().splitlines() if line.strip()]


def _captions(text_dir: Path, rel_paths: list[str], choice) -> list[str]:
    out = []
    for rel in rel_paths:
        path = text_dir / Path(rel).with_suffix(".txt")
        try:
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        except FileNotFoundError:
            raise BenchmarkError(f"cub: caption file {path} is missing (text_c10 must have one file per image)") from None
        if not lines:
            raise BenchmarkError(f"cub: caption file {path} is empty")
        out.append(" ".join(lines) if choice == "all" else lines[int(choice) % len(lines)])
    return out


@DATASETS.register("cub")
class CUB:
    """CUB-200-2011 birds: 100/50/50 species (Chen et al. split), 84x84 RGB, Reed et al. captions if present."""

    @staticmethod
    def load(data_root: str | None = None, download: bool = False, image_size: int = 84, crop_bbox: bool = False,
             captions: bool = True, caption: int | str = 0) -> FewShotDataset:
        """Read ``CUB_200_2011`` under ``data_root``.

        Args:
            data_root: folder holding ``CUB_200_2011/`` (and optionally ``text_c10/``).
            download: fetch the images archive (md5-checked) if ``CUB_200_2011`` is missing.
            image_size: side of the square RGB images (whole image, or its bounding box, resized).
            crop_bbox: crop each image to its ``bounding_boxes.txt`` box first.
            captions: read Reed et al. captions when ``text_c10`` is present.
            caption: which sentence of each caption file (index), or ``"all"`` to join the ten.
        """
        if data_root is None:
            raise BenchmarkError(f"cub needs --data-root, the folder holding:\n{LAYOUT}\n{HOW}")
        root = Path(data_root).expanduser()
        if download and not (root / "CUB_200_2011" / "images.txt").is_file():
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(URL, str(root), filename="CUB_200_2011.tgz", md5=MD5)
        cub = require_dir(root / "CUB_200_2011", "cub", LAYOUT, HOW)
        images_txt = _read_table(cub / "images.txt")
        classes = [name.strip() for _, name in _read_table(cub / "classes.txt")]
        present = set(classes)
        index = {c: i for i, c in enumerate(classes)}
        splits = {}
        for s in ("train", "val", "test"):
            wanted = json.loads(package_data("cub", f"{s}.json").read_text())
            missing = [c for c in wanted if c not in present]
            if missing:
                raise missing_classes_error("cub", f"tasks/data/cub/{s}.json", missing, cub / "classes.txt")
            splits[s] = np.array(sorted(index[c] for c in wanted), dtype=np.int64)
        rel = [p.strip() for _, p in images_txt]
        ids = [i for i, _ in images_txt]
        labels = []
        for p in rel:
            folder = p.split("/", 1)[0]
            if folder not in index:
                raise BenchmarkError(f"cub: images.txt lists {p}, whose folder {folder!r} is not in classes.txt")
            labels.append(index[folder])
        boxes = None
        if crop_bbox:
            table = {r[0]: [float(v) for v in r[1:5]] for r in _read_table(cub / "bounding_boxes.txt")}
            boxes = [(x, y, x + w, y + h) for x, y, w, h in (table[i] for i in ids)]
        images = decode_files(f"cub-{image_size}{'-bbox' if crop_bbox else ''}", [cub / "images" / p for p in rel],
                              image_size, "RGB", boxes=boxes)
        caps, text_dir = None, None
        if captions:
            text_dir = next((d for d in (root / "text_c10", root / "cvpr2016_cub" / "text_c10", cub / "text_c10")
                             if d.is_dir()), None)
            if text_dir is not None:
                caps = _captions(text_dir, rel, caption)
            else:
                log.info("cub: no text_c10 folder under %s; the dataset has class text only", root)
        names = [c.split(".", 1)[-1].replace("_", " ") for c in classes]
        mean, std = channel_stats(images)
        return FewShotDataset(
            name="cub", images=images, labels=np.asarray(labels, dtype=np.int64), class_names=names, splits=splits,
            captions=caps, class_texts=list(names), mean=mean, std=std,
            info={"root": str(cub), "captions": str(text_dir) if text_dir else None, "crop_bbox": crop_bbox},
        )
