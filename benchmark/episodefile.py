"""Fixed episodes from a file: exactly the support and query items a user names.

Two formats (see ``docs/python-api.md``). JSON::

    {"root": "optional folder that relative paths start from (default: the file's folder)",
     "episodes": [{"id": "e0",
                   "support": {"classA": ["a/1.png"], "classB": ["b/1.png"]},
                   "query":   {"classA": ["a/2.png"], "classB": ["b/2.png"]}}]}

where each side may also be a list of ``{"item": ..., "label": ...}``; and CSV with the columns
``episode, set, item, label`` (``set`` is ``support`` or ``query``), one row per item. An item is
an image file path (relative to ``root``) or an integer index into the checkpoint's dataset;
one file uses one kind. Classes keep the order of their first support item, which is their label.
Every class has the same number of support items; query counts may differ per class, and a class
may have none (e.g. 20-way one-shot trials with a single query), as long as the episode has a query.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import BenchmarkError

SIDES = ("support", "query")
CSV_COLUMNS = ("episode", "set", "item", "label")


@dataclass(frozen=True)
class FileEpisode:
    """One episode of a file.

    Attributes:
        episode_id: the id given in the file (or its position).
        classes: class labels, in label order (order of first appearance in the support set).
        support, query: per class (same order), its items: ``Path`` for files, ``int`` for dataset indices.
    """

    episode_id: str
    classes: tuple[str, ...]
    support: tuple[tuple, ...]
    query: tuple[tuple, ...]


@dataclass(frozen=True)
class EpisodeFile:
    """The validated episodes of a file, and whether their items are file paths or dataset indices."""

    path: Path
    episodes: tuple[FileEpisode, ...]
    by_index: bool


def read_episodes(path: str | Path) -> EpisodeFile:
    """Read and validate a JSON or CSV episode file.

    Raises:
        BenchmarkError: a missing or malformed file, missing keys or columns, mixed item kinds, a query
            class that has no support items, unequal support counts per class, an episode without
            query items, an item in both sides, or an image file that does not exist (each message
            names the file and the episode).
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"episode file not found: {path}")
    if path.suffix.lower() == ".csv":
        root, raw = path.parent, _read_csv(path)
    elif path.suffix.lower() == ".json":
        root, raw = _read_json(path)
    else:
        raise BenchmarkError(f"episode file {path}: give a .json or .csv file (see docs/python-api.md)")
    if not raw:
        raise BenchmarkError(f"episode file {path} holds no episodes")
    kinds = {isinstance(item, int) for _, sides in raw for side in sides.values() for item, _ in side}
    if len(kinds) > 1:
        raise BenchmarkError(f"episode file {path} mixes file paths and dataset indices; use one kind of item")
    by_index = kinds == {True}
    episodes = tuple(_episode(path, root, eid, sides, by_index) for eid, sides in raw)
    ids = [e.episode_id for e in episodes]
    if len(set(ids)) != len(ids):
        raise BenchmarkError(f"episode file {path}: episode ids repeat ({sorted({i for i in ids if ids.count(i) > 1})[:3]})")
    return EpisodeFile(path, episodes, by_index)


def _item(value, where: str):
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise BenchmarkError(f"{where}: an item is a file path or a dataset index, got {value!r}")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _read_json(path: Path) -> tuple[Path, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BenchmarkError(f"cannot read episode file {path}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("episodes"), list):
        raise BenchmarkError(f"episode file {path}: expected an object with an 'episodes' list")
    root = path.parent / data["root"] if isinstance(data.get("root"), str) else path.parent
    raw = []
    for i, ep in enumerate(data["episodes"]):
        eid = str(ep.get("id", i)) if isinstance(ep, dict) else str(i)
        where = f"episode file {path}, episode {eid!r}"
        if not isinstance(ep, dict) or any(s not in ep for s in SIDES):
            raise BenchmarkError(f"{where}: each episode needs 'support' and 'query'")
        sides = {}
        for side in SIDES:
            value = ep[side]
            if isinstance(value, dict):
                empty = [label for label, items in value.items() if items == []]
                if side == "support" and empty:
                    raise BenchmarkError(f"{where}: class(es) {empty[:5]} have no support items: give each class "
                                         "at least one (a class may have no query items)")
                pairs = [(_item(it, where), str(label)) for label, items in value.items()
                         for it in (items if isinstance(items, list) else [items])]
            elif isinstance(value, list) and all(isinstance(v, dict) and {"item", "label"} <= set(v) for v in value):
                pairs = [(_item(v["item"], where), str(v["label"])) for v in value]
            else:
                raise BenchmarkError(f"{where}: {side!r} must map each class to its items, or list "
                                     "{\"item\": ..., \"label\": ...} objects")
            sides[side] = pairs
        raw.append((eid, sides))
    return root, raw


def _read_csv(path: Path) -> list:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise BenchmarkError(f"episode file {path}: missing column(s) {missing}; the columns are "
                                     f"{', '.join(CSV_COLUMNS)}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise BenchmarkError(f"cannot read episode file {path}: {err}") from None
    episodes: dict[str, dict] = {}
    for line, row in enumerate(rows, 2):
        side = (row["set"] or "").strip().lower()
        if side not in SIDES:
            raise BenchmarkError(f"episode file {path}, line {line}: set must be 'support' or 'query', got {row['set']!r}")
        where = f"episode file {path}, line {line}"
        label = (row["label"] or "").strip()
        if not label:
            raise BenchmarkError(f"{where}: the label is empty")
        sides = episodes.setdefault(row["episode"].strip(), {s: [] for s in SIDES})
        sides[side].append((_item((row["item"] or "").strip(), where), label))
    return list(episodes.items())


def _episode(path: Path, root: Path, eid: str, sides: dict, by_index: bool) -> FileEpisode:
    """Group one episode's items by class and check it (see :func:`read_episodes`)."""
    where = f"episode file {path}, episode {eid!r}"
    classes = list(dict.fromkeys(label for _, label in sides["support"]))
    if len(classes) < 2:
        raise BenchmarkError(f"{where}: needs support items of at least 2 classes, has {classes}")
    unknown = sorted({label for _, label in sides["query"]} - set(classes))
    if unknown:
        raise BenchmarkError(f"{where}: class(es) {unknown} of the query have no support items (the support "
                             f"classes are {classes[:10]}): give each class at least one support item")
    grouped = {}
    for side in SIDES:
        items = {c: [] for c in classes}
        for item, label in sides[side]:
            items[label].append(item if by_index else _file(root, item, f"{where}, {side} item of class {label!r}"))
        counts = {c: len(v) for c, v in items.items()}
        if side == "support" and len(set(counts.values())) > 1:
            shown = ", ".join(f"{c!r}: {n}" for c, n in list(counts.items())[:6])
            raise BenchmarkError(f"{where}: unequal support counts per class ({shown}); the learners take "
                                 "N-way K-shot episodes: give every class the same number of support items")
        if side == "query" and not any(counts.values()):
            raise BenchmarkError(f"{where}: has no query items: give at least one (classes may have none)")
        grouped[side] = tuple(tuple(items[c]) for c in classes)
    both = {i for row in grouped["support"] for i in row} & {i for row in grouped["query"] for i in row}
    if both:
        raise BenchmarkError(f"{where}: item(s) {sorted(map(str, both))[:3]} are in both the support and the query")
    return FileEpisode(eid, tuple(classes), grouped["support"], grouped["query"])


def _file(root: Path, item: str, where: str) -> Path:
    file = (root / item).resolve() if not Path(item).is_absolute() else Path(item)
    if not file.is_file():
        raise BenchmarkError(f"{where}: file not found: {file}")
    return file
