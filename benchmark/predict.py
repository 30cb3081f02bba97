"""Per-query predictions of a trained learner on given episodes, and the files ``evaluate`` writes.

:func:`episodes_from_file` turns an episode file (:mod:`benchmark.episodefile`) into a
:class:`FewShotDataset` and :class:`EpisodeSpec` list: image files are decoded with the
checkpoint's own preprocessing (size, colour mode, resize filter, inversion); dataset indices
use the checkpoint's dataset. :func:`predict` runs the episodes and returns one row per query item.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from benchmark.episodefile import EpisodeFile
from benchmark.evaluate import EmbeddedEpisodes, _eager
from learners import Learner
from tasks.datasets import FewShotDataset
from tasks.datasets.imagecache import decode_image
from tasks.episode import EpisodeLoader, EpisodeSpec, TaskSetting, flat_items
from tasks.errors import BenchmarkError, UnsupportedSetting

log = logging.getLogger(__name__)


@dataclass
class Episodes:
    """Episodes ready to run: their dataset, specs and how to name items and classes in the output.

    Attributes:
        dataset: holds the items the specs index.
        specs: the episodes.
        item_names: display name of every dataset item (file path or index), ``[n_items]``.
        ids: the episode ids shown in the output, one per spec.
        in_training: per spec, whether any of its classes was a training class of the checkpoint.
        source_sha256: sha256 of the episode file or of the sampled manifest.
        name: a short name of the source (for the ``dataset`` column).
        seed: the seed that drew sampled episodes; ``None`` for an episode file.
    """

    dataset: FewShotDataset
    specs: list[EpisodeSpec]
    item_names: list[str]
    ids: list[str]
    in_training: list[bool]
    source_sha256: str
    name: str
    seed: int | None = None


def training_flags(specs: list[EpisodeSpec], class_names: list[str], meta: dict) -> list[bool]:
    """Whether each episode shows a class the checkpoint was trained on (by class name); warns if any."""
    train = set(meta["dataset"]["train_classes"])
    flags = [any(class_names[c] in train for c in spec.class_ids) for spec in specs]
    if any(flags):
        log.warning("%d of %d episodes show classes the checkpoint was trained on (column in_training_classes): "
                    "their accuracy is not a few-shot test on new classes", sum(flags), len(flags))
    return flags


def episodes_from_file(source: EpisodeFile, meta: dict, dataset: FewShotDataset | None = None) -> Episodes:
    """Build the episodes of a file; ``dataset`` is needed when items are dataset indices."""
    pre = meta["preprocessing"]
    if source.by_index:
        if dataset is None:
            raise BenchmarkError(f"episode file {source.path} names items by dataset index: give the dataset "
                                 "(--dataset NAME --data-root DIR)")
        names = dataset.class_names
        index = {n: i for i, n in enumerate(names)}
        specs = []
        for k, ep in enumerate(source.episodes):
            for side in (ep.support, ep.query):
                for label, items in zip(ep.classes, side):
                    _check_index_items(source, ep.episode_id, label, items, dataset, index)
            specs.append(EpisodeSpec(tuple(index[c] for c in ep.classes), ep.support, ep.query, k))
        items = [str(i) for i in range(len(dataset.labels))]
    else:
        files = list(dict.fromkeys(p for ep in source.episodes for side in (ep.support, ep.query)
                                   for row in side for p in row))
        names = list(dict.fromkeys(c for ep in source.episodes for c in ep.classes))
        position = {p: i for i, p in enumerate(files)}
        label_of = {p: names.index(c) for ep in source.episodes for c, row in zip(ep.classes * 2, ep.support + ep.query)
                    for p in row}
        size = tuple(pre["image_shape"][1:])
        images = np.stack([decode_image(p, size, pre["mode"], pre["resample"]) for p in files])
        if pre.get("invert"):
            images = 255 - images
        dataset = FewShotDataset(name=f"file:{source.path.name}", images=images,
                                 labels=np.array([label_of[p] for p in files], dtype=np.int64), class_names=names,
                                 splits={"test": np.arange(len(names), dtype=np.int64)},
                                 mean=tuple(pre["mean"]), std=tuple(pre["std"]), info={"episodes": str(source.path)})
        lookup = {c: i for i, c in enumerate(names)}
        specs = [EpisodeSpec(tuple(lookup[c] for c in ep.classes),
                             tuple(tuple(position[p] for p in row) for row in ep.support),
                             tuple(tuple(position[p] for p in row) for row in ep.query), k)
                 for k, ep in enumerate(source.episodes)]
        items = [str(p) for p in files]
    return Episodes(dataset, specs, items, [e.episode_id for e in source.episodes],
                    training_flags(specs, names, meta), hashlib.sha256(source.path.read_bytes()).hexdigest(),
                    source.path.name)


def _check_index_items(source: EpisodeFile, eid: str, label: str, items, dataset: FewShotDataset,
                       index: dict[str, int]) -> None:
    where = f"episode file {source.path}, episode {eid!r}"
    if label not in index:
        raise BenchmarkError(f"{where}: unknown class {label!r}: not a class of dataset {dataset.name!r} "
                             "(`python run_benchmark.py ls datasets` describes the datasets; class names as in "
                             "its split lists)")
    for item in items:
        if not 0 <= item < len(dataset.labels):
            raise BenchmarkError(f"{where}: dataset index {item} is out of range: dataset {dataset.name!r} has "
                                 f"{len(dataset.labels)} items")
        if dataset.labels[item] != index[label]:
            raise BenchmarkError(f"{where}: item {item} is of class {dataset.class_names[dataset.labels[item]]!r} "
                                 f"in dataset {dataset.name!r}, the file says {label!r}")


def make_loader(learner: Learner, dataset: FewShotDataset, device: torch.device) -> EpisodeLoader:
    """An episode loader that feeds ``learner`` (``learner.benchmark_info`` from :func:`load_learner`)."""
    info = learner.benchmark_info
    pre, meta = info.meta["preprocessing"], info.meta
    if tuple(dataset.image_shape) != tuple(pre["image_shape"]):
        raise BenchmarkError(f"the images of {dataset.name!r} are {tuple(dataset.image_shape)}, the checkpoint "
                             f"{info.path} takes {tuple(pre['image_shape'])}: load the dataset with the same "
                             "image_size option")
    used = set(meta["modalities"])  # what the learner reads: an image learner needs no item text
    setting = TaskSetting(*(tuple(m for m in meta["setting"][side] if m in used) or tuple(meta["setting"][side])
                            for side in ("support", "query")))
    encoder = info.text_encoder
    item_text = encoder.prepare(dataset.captions) if encoder is not None and dataset.captions is not None else None
    class_text = encoder.prepare(dataset.class_texts) if encoder is not None and dataset.class_texts else None
    if type(learner).requires_class_text and class_text is None:
        raise UnsupportedSetting(f"learner {meta['learner']!r} needs class text, which these episodes lack")
    frozen = [m for m in learner.modules() if getattr(m, "frozen", False) and hasattr(m, "precompute")]
    features = frozen[0].precompute(dataset, device) if frozen else None
    return EpisodeLoader(dataset.images, pre["mean"], pre["std"], item_text, class_text, setting,
                         image_features=features)


def _warn_transductive(learner: Learner, specs: list[EpisodeSpec]) -> None:
    """Warn when a learner that predicts from query-batch statistics gets queries unequally spread over classes."""
    uneven = sum(s.n_query is None for s in specs)
    if learner.transductive and uneven:
        log.warning("%d of %d episodes hold unequal query counts per class (e.g. single-query trials); learner %r is "
                    "transductive (batch norm on the query batch: batch_norm=transductive), so its predictions "
                    "depend on which queries share an episode (with one query: that image's own statistics); "
                    "a learner with batch_norm=running does not", uneven, len(specs),
                    learner.benchmark_info.meta["learner"])


def predict(learner: Learner, episodes: Episodes, device: torch.device | str = "cpu",
            batch_size: int = 32) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Run every episode; per-query predictions and per-episode accuracy and loss.

    Returns:
        ``(predictions, metrics)``: one row per query item with ``episode, item, label, prediction,
        correct, score`` (softmax probability of the prediction), ``label_score``, ``in_training_classes``;
        and ``{"accuracy": [n_episodes], "loss": [n_episodes]}``.
    """
    device = torch.device(device)
    learner = learner.to(device).eval()
    loader = make_loader(learner, episodes.dataset, device)
    specs = episodes.specs
    _warn_transductive(learner, specs)
    source = (EmbeddedEpisodes(learner, loader, SimpleNamespace(episodes=specs), device)
              if learner.fixed_embedding else loader)
    if type(learner).predict_episodes is Learner.predict_episodes:
        batch_size = 1
    names, rows = episodes.dataset.class_names, []
    metrics = {"accuracy": np.zeros(len(specs)), "loss": np.zeros(len(specs))}
    start = time.perf_counter()
    with _eager(), torch.no_grad():
        for first in range(0, len(specs), batch_size):
            batch = [source.load(s).to(device) for s in specs[first:first + batch_size]]
            for k, (episode, logits) in enumerate(zip(batch, learner.predict_episodes(batch)), first):
                probs = torch.softmax(logits.float(), -1).cpu()
                labels = episode.query_labels.cpu()
                guess = probs.argmax(-1)
                metrics["accuracy"][k] = (guess == labels).double().mean().item()
                metrics["loss"][k] = torch.nn.functional.cross_entropy(logits.float().cpu(), labels).item()
                items = flat_items(specs[k].query)
                for j, item in enumerate(items):
                    rows.append({"episode": episodes.ids[k], "item": episodes.item_names[item],
                                 "label": names[specs[k].class_ids[labels[j]]],
                                 "prediction": names[specs[k].class_ids[guess[j]]], "correct": bool(guess[j] == labels[j]),
                                 "score": round(float(probs[j, guess[j]]), 6),
                                 "label_score": round(float(probs[j, labels[j]]), 6),
                                 "in_training_classes": episodes.in_training[k]})
    log.info("%d episodes evaluated in %.1f s", len(specs), time.perf_counter() - start)
    return pd.DataFrame(rows), metrics
