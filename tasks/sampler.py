"""Episode sampling with an explicit random generator, and fixed test manifests."""
from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.atomic import atomic_write_text
from tasks.datasets.base import FewShotDataset
from tasks.episode import EpisodeSpec
from tasks.errors import BenchmarkError


_OTHER_KEYS = (". On a small dataset set all of them: train.way, train.shot, train.query (training), "
               "train.val_way, train.val_shot, train.val_query (validation), --ways, --shots, --queries (test)")


class EpisodeSampler:
    """Draws N-way K-shot Q-query episode specs from one split.

    Classes are drawn uniformly without replacement from the split, then K+Q
    distinct items per class, so support and query never share an item.
    All randomness comes from the ``rng`` passed to :meth:`sample`.
    """

    def __init__(self, dataset: FewShotDataset, split: str, n_way: int, n_shot: int, n_query: int,
                 keys: tuple[str, str, str] = ("n_way", "n_shot", "n_query")) -> None:
        """``keys``: the config keys that set way, shot and query, named in the errors (e.g. ``train.way``)."""
        way_key, shot_key, query_key = keys
        for key, value, low in ((way_key, n_way, 2), (shot_key, n_shot, 1), (query_key, n_query, 1)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise BenchmarkError(f"{key} must be an integer >= {low}, got {value!r}")
        self.classes = dataset.split_classes(split)
        if n_way > len(self.classes):
            raise BenchmarkError(
                f"{way_key}={n_way} is larger than the {len(self.classes)} classes of the {split!r} split "
                f"of dataset {dataset.name!r}; set {way_key} <= {len(self.classes)}{_OTHER_KEYS}"
            )
        items = dataset.items_by_class()
        self.items = [items[c] for c in self.classes]
        smallest = min(len(i) for i in self.items)
        if n_shot + n_query > smallest:
            small = [dataset.class_names[c] for c, i in zip(self.classes, self.items) if len(i) < n_shot + n_query]
            raise BenchmarkError(
                f"{shot_key} + {query_key} = {n_shot} + {n_query} = {n_shot + n_query} exceeds the items of "
                f"{len(small)} class(es) of the {split!r} split of {dataset.name!r} (smallest has {smallest}; "
                f"e.g. {small[:3]}); lower {shot_key} or {query_key}{_OTHER_KEYS}"
            )
        self.split, self.n_way, self.n_shot, self.n_query = split, n_way, n_shot, n_query

    def sample(self, rng: np.random.Generator, episode_id: int = 0) -> EpisodeSpec:
        ways = rng.choice(len(self.classes), size=self.n_way, replace=False)
        support, query = [], []
        for w in ways:
            chosen = rng.choice(self.items[w], size=self.n_shot + self.n_query, replace=False)
            support.append(tuple(int(i) for i in chosen[: self.n_shot]))
            query.append(tuple(int(i) for i in chosen[self.n_shot :]))
        return EpisodeSpec(tuple(int(self.classes[w]) for w in ways), tuple(support), tuple(query), episode_id)


@dataclass(frozen=True)
class EpisodeManifest:
    """A fixed, saved list of episodes; every method is evaluated on the same one."""

    dataset: str
    dataset_fingerprint: str
    split: str
    n_way: int
    n_shot: int
    n_query: int
    seed: int
    episodes: tuple[EpisodeSpec, ...]

    @classmethod
    def generate(cls, dataset: FewShotDataset, split: str, n_way: int, n_shot: int, n_query: int,
                 n_episodes: int, seed: int, keys: tuple[str, str, str] = ("n_way", "n_shot", "n_query"),
                 ) -> "EpisodeManifest":
        if n_episodes < 1:
            raise BenchmarkError(f"the number of test episodes must be >= 1, got {n_episodes}")
        sampler = EpisodeSampler(dataset, split, n_way, n_shot, n_query, keys)
        rng = np.random.default_rng(np.random.SeedSequence([seed, n_way, n_shot, n_query]))
        episodes = tuple(sampler.sample(rng, i) for i in range(n_episodes))
        return cls(dataset.name, dataset.fingerprint(), split, n_way, n_shot, n_query, seed, episodes)

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "dataset_fingerprint": self.dataset_fingerprint, "split": self.split,
                "n_way": self.n_way, "n_shot": self.n_shot, "n_query": self.n_query, "seed": self.seed,
                "episodes": [e.to_json() for e in self.episodes]}

    @property
    def sha256(self) -> str:
        """Hash of the canonical JSON of the contents (stable across save/load)."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write atomically as JSON with its sha256 alongside the contents."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"sha256": self.sha256, **self.to_json()}))
        return path

    @classmethod
    def load(cls, path: str | Path, dataset: FewShotDataset | None = None) -> "EpisodeManifest":
        """Load and verify the stored hash (and the dataset fingerprint, if a dataset is given); a path
        ending in ``.gz`` is read as gzip (600-episode manifests are ~0.5 MB as JSON, ~0.1 MB gzipped)."""
        path = Path(path)
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            data = json.loads(raw)
            manifest = cls(
                data["dataset"], data["dataset_fingerprint"], data["split"], int(data["n_way"]),
                int(data["n_shot"]), int(data["n_query"]), int(data["seed"]),
                tuple(EpisodeSpec.from_json(e) for e in data["episodes"]),
            )
        except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
            raise BenchmarkError(f"cannot read episode manifest {path}: {err}; delete it to regenerate") from None
        if data.get("sha256") != manifest.sha256:
            raise BenchmarkError(f"episode manifest {path} does not match its stored sha256 (edited or corrupt); "
                                 "delete it to regenerate")
        if dataset is not None and manifest.dataset_fingerprint != dataset.fingerprint():
            raise BenchmarkError(f"episode manifest {path} was made for other contents of dataset "
                                 f"{manifest.dataset!r}; delete it or use a different --out")
        if dataset is not None:
            allowed = set(dataset.split_classes(manifest.split).tolist())
            outside = sorted({c for e in manifest.episodes for c in e.class_ids} - allowed)
            if outside:
                raise BenchmarkError(f"episode manifest {path} uses {len(outside)} class(es) outside the "
                                     f"{manifest.split!r} split of {manifest.dataset!r} (e.g. "
                                     f"{[dataset.class_names[c] for c in outside[:3]]}); delete it to regenerate")
        return manifest

    @classmethod
    def get(cls, directory: str | Path, dataset: FewShotDataset, split: str, n_way: int, n_shot: int,
            n_query: int, n_episodes: int, seed: int, keys: tuple[str, str, str] = ("n_way", "n_shot", "n_query"),
            ) -> tuple["EpisodeManifest", Path]:
        """Load the manifest for these settings from ``directory``, or generate and save it.

        The file name holds the dataset's fingerprint, so two datasets of one name (other contents or
        options) never share a manifest in one ``--out``; a manifest saved under the older name without
        it is still used when it was made for this dataset's contents. A gzipped copy
        (``<name>.json.gz``, as committed results keep them) stands for the file.
        """
        settings = f"{split}-{n_way}w{n_shot}s{n_query}q-{n_episodes}ep-seed{seed}.json"
        path = Path(directory) / f"{dataset.name}-{dataset.fingerprint()[:12]}-{settings}"
        for saved in (path, path.with_name(path.name + ".gz")):
            if saved.exists():
                return cls.load(saved, dataset), saved
        legacy = Path(directory) / f"{dataset.name}-{settings}"
        if legacy.exists():
            try:
                return cls.load(legacy, dataset), legacy
            except BenchmarkError:
                pass  # another dataset's (or a damaged) manifest under the old name: this one gets its own
        manifest = cls.generate(dataset, split, n_way, n_shot, n_query, n_episodes, seed, keys)
        return manifest, manifest.save(path)
