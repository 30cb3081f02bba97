"""On-disk cache of frozen-encoder features, one ``[n_items, D]`` tensor per (encoder, data).

A frozen encoder (a pretrained image backbone, a frozen sentence encoder) gives every item the
same features in every episode, run and sweep, so they are computed once and stored under
``cache_dir()/features/``. The file name is a hash of everything that determines the features:

* the encoder's name,
* a hash of its weights (so a different checkpoint, or a different random init, never hits),
* its preprocessing (normalisation, resizing, channel handling: any string the encoder gives),
* the dataset's contents (:meth:`FewShotDataset.fingerprint`).

Change any of them and the key changes: the old file is simply not found (and can be deleted).
A small JSON file beside each tensor records the key fields, for people browsing the cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from tasks.atomic import atomic_write, atomic_write_text
from tasks.paths import cache_dir

log = logging.getLogger(__name__)

KEY_FIELDS = ("encoder", "weights", "preprocessing", "dataset")


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def feature_path(key: Mapping[str, str], directory: Path | None = None) -> Path:
    """Where the features for ``key`` (``encoder``, ``weights``, ``preprocessing``, ``dataset``) live."""
    missing = [k for k in KEY_FIELDS if k not in key]
    if missing:
        raise ValueError(f"feature cache key lacks {missing}")
    digest = hashlib.sha256(json.dumps({k: str(key[k]) for k in KEY_FIELDS}, sort_keys=True).encode()).hexdigest()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(key["encoder"]))
    return (directory or cache_dir() / "features") / f"{safe}-{digest[:24]}.pt"


def cached_features(key: Mapping[str, str], compute: Callable[[], Tensor],
                    directory: Path | None = None) -> tuple[Tensor, bool]:
    """Features for ``key`` from the cache, or ``compute()`` them and store them.

    Args:
        key: ``encoder``, ``weights``, ``preprocessing`` and ``dataset`` (strings; see the module docstring).
        compute: returns float ``[n_items, D]`` for every item of the dataset, in item order.
        directory: cache folder (default ``cache_dir()/features``).

    Returns:
        ``(features [n_items, D], hit)`` where ``hit`` says whether they came from the cache.
    """
    path = feature_path(key, directory)
    if path.exists():
        try:
            return torch.load(path, weights_only=True), True
        except (OSError, RuntimeError, EOFError) as err:
            log.warning("ignoring unreadable feature cache %s (%s)", path, err)
    features = compute().detach().cpu().contiguous()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(features, f))
        atomic_write_text(path.with_suffix(".json"), json.dumps({**{k: str(key[k]) for k in KEY_FIELDS},
                                                                 "shape": list(features.shape)}, indent=1))
        log.info("cached %s features %s in %s", key["encoder"], tuple(features.shape), path)
    except OSError as err:
        log.warning("could not cache features in %s (%s)", path.parent, err)
    return features, False


@torch.no_grad()
def frozen_image_features(module: torch.nn.Module, encoder: str, weights: str, dataset, device: torch.device | str,
                          batch_size: int = 256) -> Tensor:
    """Run frozen ``module`` over every image of ``dataset`` once, through the on-disk cache.

    Images are normalised exactly as episodes normalise them, so that a cached row equals what the
    module sees in an episode. The key holds ``encoder``, ``weights`` (e.g. :func:`weights_hash`),
    ``module.preprocessing(mean, std)`` and the dataset's fingerprint.

    Returns:
        float ``[n_items, D]`` in item order.
    """
    from tasks.episode import EpisodeLoader, TaskSetting

    loader = EpisodeLoader(dataset.images, dataset.mean, dataset.std, setting=TaskSetting(("image",), ("image",)))

    def compute() -> Tensor:
        module.eval()
        out = []
        for start in range(0, len(dataset.labels), batch_size):
            items = torch.arange(start, min(start + batch_size, len(dataset.labels)))
            out.append(module(loader.side(items, ("image",))["image"].to(device)).float().cpu())
        return torch.cat(out)

    key = {"encoder": encoder, "weights": weights, "preprocessing": module.preprocessing(dataset.mean, dataset.std),
           "dataset": dataset.fingerprint()}
    return cached_features(key, compute)[0]
