"""``omniglot``: Omniglot (Lake et al., 2015) in torchvision's extracted layout.

Layout under ``--data-root``::

    omniglot-py/images_background/<Alphabet>/characterNN/*.png   (30 alphabets, 964 characters)
    omniglot-py/images_evaluation/<Alphabet>/characterNN/*.png   (20 alphabets, 659 characters)

Each character has 20 drawings (105x105, 1-bit), converted to grayscale and
resized to 28x28 (white background, dark strokes, as in the files). Following
Vinyals et al. (2016) every character rotated by 90, 180 and 270 degrees is a
new class; the rotated images are exact ``np.rot90`` copies of the resized
originals (counter-clockwise, as PIL's ``rotate``).

Splits (``split=`` option):
    ``vinyals`` (default): the Vinyals et al. character split used by ProtoNet
    and MAML, 1028 / 172 / 423 characters (x4 rotations), read from
    ``tasks/data/omniglot_vinyals/{train,val,test}.txt``.
    ``vinyals_trainval``: Snell et al.'s final-model split: meta-train on the 1,200 Vinyals
        training + validation characters (``trainval.txt``), test on the same 423 test
        characters; there is no validation split (train with ``train.val_every: 0``).
    ``background``: Lake's split: train on ``images_background``, test on
    ``images_evaluation``; a seeded ``val_fraction`` of the background
    characters (all rotations together) is held out for validation.

Class text is ``"<alphabet> character NN"`` (plus the rotation): weak text, this
is the unimodal reproduction benchmark. There are no captions.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tasks.datasets.base import DATASETS, FewShotDataset
from tasks.datasets.imagecache import (
    channel_stats, decode_files, list_images, missing_classes_error, package_data, require_dir,
    seeded_class_split,
)
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)

FOLDERS = ("images_background", "images_evaluation")
SPLITS = ("vinyals", "vinyals_trainval", "background")
LAYOUT = ("  omniglot-py/images_background/<Alphabet>/characterNN/NNNN_MM.png\n"
          "  omniglot-py/images_evaluation/<Alphabet>/characterNN/NNNN_MM.png")
HOW = ("rerun with --download (uses torchvision.datasets.Omniglot), or download images_background.zip and "
       "images_evaluation.zip from https://github.com/brendenlake/omniglot/tree/master/python and unzip "
       "them into <data-root>/omniglot-py/.")


def _find_root(data_root: Path) -> Path:
    for candidate in (data_root / "omniglot-py", data_root):
        if all((candidate / f).is_dir() for f in FOLDERS):
            return candidate
    return require_dir(data_root / "omniglot-py" / FOLDERS[0], "omniglot", LAYOUT, HOW)


def download(data_root: Path) -> None:
    """Fetch both halves with torchvision's downloader (checks the zips' md5)."""
    from torchvision.datasets import Omniglot

    for background in (True, False):
        Omniglot(str(data_root), background=background, download=True)


@DATASETS.register("omniglot")
class OmniglotDataset:
    """Omniglot: 1623 handwritten characters x4 rotations, 20 drawings each, 28x28 grayscale (Vinyals split)."""

    @staticmethod
    def load(data_root: str | None = None, download: bool = False, split: str = "vinyals",
             image_size: int = 28, rotations: tuple[int, ...] | list[int] = (0, 90, 180, 270),
             val_fraction: float = 0.15, seed: int = 0) -> FewShotDataset:
        """Read ``omniglot-py`` under ``data_root``.

        Long: the layout checks, each with its own message, in the order a user fixes them.

        Args:
            data_root: folder holding ``omniglot-py/`` (or ``omniglot-py`` itself).
            download: fetch the data with torchvision first if it is missing.
            split: ``vinyals`` or ``background`` (see module docstring).
            image_size: side of the square grayscale images.
            rotations: rotations (degrees, multiples of 90) that make classes; ``vinyals`` needs all four.
            val_fraction, seed: the held-out validation characters of the ``background`` split.
        """
        if data_root is None:
            raise BenchmarkError(f"omniglot needs --data-root, the folder holding:\n{LAYOUT}\n{HOW}")
        data_root = Path(data_root).expanduser()
        if download and not all((data_root / "omniglot-py" / f).is_dir() for f in FOLDERS):
            OmniglotDataset.download(data_root)
        root = _find_root(data_root)
        rotations = tuple(int(r) for r in rotations)
        if not rotations or any(r % 90 or not 0 <= r < 360 for r in rotations) or len(set(rotations)) != len(rotations):
            raise BenchmarkError(f"omniglot: rotations must be distinct values among 0, 90, 180, 270; got {rotations}")
        if split not in SPLITS:
            raise BenchmarkError(f"omniglot: split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")

        # Characters: (folder, alphabet, character), sorted; their drawings, sorted by name.
        chars: list[tuple[str, str, str]] = []
        files: list[Path] = []
        counts: list[int] = []
        for folder in FOLDERS:
            for alphabet in sorted(p.name for p in (root / folder).iterdir() if p.is_dir()):
                for char in sorted(p.name for p in (root / folder / alphabet).iterdir() if p.is_dir()):
                    drawings = list_images(root / folder / alphabet / char)
                    if not drawings:
                        continue
                    chars.append((folder, alphabet, char))
                    files.extend(drawings)
                    counts.append(len(drawings))
        if not chars:
            raise BenchmarkError(f"omniglot: no character folders with images under {root}.\nExpected:\n{LAYOUT}")
        base = decode_files(f"omniglot-{image_size}", files, image_size, mode="L")
        base_labels = np.repeat(np.arange(len(chars)), counts)

        n_rot = len(rotations)
        images = np.concatenate([np.rot90(base, k=r // 90, axes=(2, 3)) for r in rotations])
        labels = np.concatenate([base_labels * n_rot + j for j in range(n_rot)]).astype(np.int64)
        class_names, class_texts = [], []
        for _, alphabet, char in chars:
            for r in rotations:
                class_names.append(f"{alphabet}/{char}/rot{r:03d}")
                number = int("".join(ch for ch in char if ch.isdigit()) or 0)
                text = f"{alphabet.replace('_', ' ')} character {number}"
                class_texts.append(text + (f", rotated by {r} degrees" if r else ""))
        index = {name: i for i, name in enumerate(class_names)}

        if split.startswith("vinyals"):
            splits = {}
            files_of = ({"train": "trainval", "test": "test"} if split == "vinyals_trainval"
                        else {"train": "train", "val": "val", "test": "test"})
            for s, stem in files_of.items():
                path = package_data("omniglot_vinyals", f"{stem}.txt")
                names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
                wanted = [n for n in names if int(n.rsplit("rot", 1)[1]) in rotations]
                missing = [n for n in wanted if n not in index]
                if missing:
                    raise missing_classes_error("omniglot", str(path), missing, root)
                splits[s] = np.array(sorted(index[n] for n in wanted), dtype=np.int64)
        else:
            bg = np.array([f == FOLDERS[0] for f, _, _ in chars])
            bg_chars = np.flatnonzero(bg)
            part = seeded_class_split(len(bg_chars), (1 - val_fraction, val_fraction, 0), seed)
            expand = lambda cs: np.sort(np.concatenate([cs * n_rot + j for j in range(n_rot)])).astype(np.int64)  # noqa: E731
            splits = {"train": expand(bg_chars[part["train"]]), "val": expand(bg_chars[part["val"]]),
                      "test": expand(np.flatnonzero(~bg))}
        mean, std = channel_stats(base)
        return FewShotDataset(
            name="omniglot", images=images, labels=labels, class_names=class_names, splits=splits,
            captions=None, class_texts=class_texts, mean=mean, std=std,
            info={"root": str(root), "split": split, "rotations": list(rotations), "image_size": image_size,
                  "n_characters": len(chars)},
        )

    download = staticmethod(download)
