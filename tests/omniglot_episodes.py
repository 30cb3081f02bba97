"""Build fixed-episode files of Omniglot image files (shared by the evaluate tests and the docs)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tasks.datasets.imagecache import list_images, package_data

FOLDERS = ("images_background", "images_evaluation")


def character_folder(root: Path, name: str) -> Path:
    """The folder of ``Alphabet/characterNN`` (either half of omniglot-py)."""
    alphabet, character = name.split("/")[:2]
    for folder in FOLDERS:
        path = root / "omniglot-py" / folder / alphabet / character
        if path.is_dir():
            return path
    raise FileNotFoundError(f"{name} not under {root}/omniglot-py")


def split_characters(split: str) -> list[str]:
    """Unrotated class names (``Alphabet/characterNN/rot000``) of a Vinyals split, in file order."""
    lines = package_data("omniglot_vinyals", f"{split}.txt").read_text().split()
    return [n for n in lines if n.endswith("rot000")]


def write_episodes(path: Path, data_root: Path, episodes: list[list[str]], shot: int = 1, query: int = 1,
                   absolute: bool = True, queries_per_class: list[list[int]] | None = None) -> Path:
    """A JSON episode file: per episode, ``shot`` support and ``query`` query drawings of each class
    (absolute paths, or paths relative to the file's folder); ``queries_per_class[k][i]``, when given,
    is the query count of class ``i`` of episode ``k`` instead (0: the class has no query)."""
    out = []
    for k, classes in enumerate(episodes):
        support, queries = {}, {}
        for i, name in enumerate(classes):
            if queries_per_class is not None:
                query = queries_per_class[k][i]
            files = list_images(character_folder(data_root, name))
            name_of = (lambda f: str(f.resolve())) if absolute else (lambda f: os.path.relpath(f.resolve(), path.parent.resolve()))
            support[name] = [name_of(f) for f in files[:shot]]
            queries[name] = [name_of(f) for f in files[shot:shot + query]]
        out.append({"id": f"ep{k}", "support": support, "query": queries})
    path.write_text(json.dumps({"episodes": out}, indent=1))
    return path
