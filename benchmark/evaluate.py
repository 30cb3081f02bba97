"""Evaluation of a learner on a fixed manifest of episodes."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from benchmark.metrics import METRICS, compute_metrics
from learners.base import EMBEDDING, Learner
from tasks.episode import Episode, EpisodeLoader, EpisodeSpec, flat_items
from tasks.sampler import EpisodeManifest


class EmbeddedEpisodes:
    """Episodes built from embeddings computed once per item (for ``fixed_embedding`` learners).

    Each item of the manifest is embedded once, in batches under ``inference_mode``; when
    the support and query sides show different modalities (e.g. image+text support, image
    query) the items of each side are embedded with that side's modalities. Episodes then
    index the cached embeddings ``[n_items, D]``.
    """

    def __init__(self, learner: Learner, loader: EpisodeLoader, manifest: EpisodeManifest,
                 device: torch.device, batch_size: int = 512) -> None:
        self.loader = loader
        self.tables: dict[str, tuple[np.ndarray, Tensor]] = {}
        setting = loader.setting
        # one table when both sides show the same modalities, else one per side
        tables = ({"support": ("support", "query")} if setting.support == setting.query
                  else {"support": ("support",), "query": ("query",)})
        for side, sides in tables.items():
            items = np.unique(np.concatenate([flat_items(getattr(e, s)) for e in manifest.episodes for s in sides]))
            modalities = getattr(setting, side)
            feats = []
            with torch.inference_mode():
                for i in range(0, len(items), batch_size):
                    batch = torch.as_tensor(items[i : i + batch_size])
                    inputs = {k: v.to(device) for k, v in loader.side(batch, modalities).items()}
                    feats.append(learner.embed(inputs))
            self.tables[side] = (items, torch.cat(feats).clone())
        self.tables.setdefault("query", self.tables["support"])

    def _lookup(self, side: str, rows: tuple[tuple[int, ...], ...]) -> dict[str, Tensor]:
        index, feats = self.tables[side]
        return {EMBEDDING: feats[torch.as_tensor(np.searchsorted(index, flat_items(rows)))]}

    def load(self, spec: EpisodeSpec) -> Episode:
        episode = self.loader.load_labels(spec)
        return Episode(support=self._lookup("support", spec.support), support_labels=episode.support_labels,
                       query=self._lookup("query", spec.query), query_labels=episode.query_labels,
                       class_ids=episode.class_ids, class_text=episode.class_text, episode_id=spec.episode_id)


def evaluate(learner: Learner, loader: EpisodeLoader, manifest: EpisodeManifest, device: torch.device,
             use_embedding_cache: bool = True, progress: str | None = None,
             batch_size: int = 32, metrics: list[str] | None = None) -> dict[str, np.ndarray]:
    """The registered metrics (:mod:`benchmark.metrics`) of every episode of ``manifest``.

    Episodes go to :meth:`Learner.predict_episodes` ``batch_size`` at a time when the learner
    overrides it (MAML adapts them together); other learners get one episode at a time, so only
    one episode's inputs are ever loaded for them.

    Args:
        metrics: names of registered metrics (default: all of them).

    Returns:
        metric name -> float64 ``[n_episodes]``, e.g. ``{"accuracy": ..., "ece": ..., "nll": ...}``.
    """
    names = metrics or METRICS.names()
    with _eager():  # a backbone compiled for training would recompile for every new batch shape
        return _evaluate(learner, loader, manifest, device, use_embedding_cache, progress, batch_size, names)


def _eager():
    """Context that runs compiled modules eagerly (``torch.compiler.set_stance``, torch >= 2.6)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def _evaluate(learner: Learner, loader: EpisodeLoader, manifest: EpisodeManifest, device: torch.device,
              use_embedding_cache: bool, progress: str | None, batch_size: int,
              names: list[str]) -> dict[str, np.ndarray]:
    learner.eval()
    source: EpisodeLoader | EmbeddedEpisodes = loader
    if use_embedding_cache and learner.fixed_embedding:
        source = EmbeddedEpisodes(learner, loader, manifest, device)
    values = {name: np.zeros(len(manifest.episodes)) for name in names}
    specs = manifest.episodes
    if type(learner).predict_episodes is Learner.predict_episodes:
        batch_size = 1
    bar = tqdm(total=len(specs), desc=progress, leave=False, disable=progress is None, mininterval=1)
    with torch.no_grad():
        for start in range(0, len(specs), batch_size):
            episodes = [source.load(spec).to(device) for spec in specs[start : start + batch_size]]
            for i, (episode, logits) in enumerate(zip(episodes, learner.predict_episodes(episodes)), start):
                for name, value in compute_metrics(logits, episode.query_labels, names).items():
                    values[name][i] = value
            bar.update(len(episodes))
    bar.close()
    return values

