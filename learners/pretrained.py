"""A trained Conv-4 loaded from a checkpoint and frozen: fixed per-item features through the feature cache.

``backbone: conv4_frozen`` with ``backbone_options: {checkpoint: <path>}`` takes the image backbone
of a model the harness trained (``<run>/checkpoints/<slug>.pt``, e.g. ProtoNet on images) or a
plain :class:`learners.backbones.Conv4` state dict, freezes it (no gradients, batch norm in eval
mode) and lets the harness compute every item's features once, cached on disk by
:mod:`tasks.features` (keyed by the weights, the preprocessing and the dataset's fingerprint).
Learners on top of it (ProtoNet, AM3, the class-text fusions) then train on features only.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from learners.backbones import Conv4
from learners.registry import BACKBONES
from tasks.errors import BenchmarkError

HARNESS_PREFIX = "encoder.encoders.image."  # where a learner's state dict keeps its image backbone


def backbone_state(path: str | Path, prefix: str = HARNESS_PREFIX) -> dict[str, Tensor]:
    """The image backbone's tensors in checkpoint ``path``, keys relative to the backbone.

    Accepts a learner state dict (keys under ``prefix``), a plain backbone state dict
    (``blocks.*``), a harness model file (``"state_dict"``, see :func:`benchmark.checkpoint.save_model`)
    or a training checkpoint (``"model"``) holding either.

    Raises:
        BenchmarkError: the file is missing or unreadable, or holds no image backbone.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise BenchmarkError(f"backbone checkpoint {path} does not exist; give the .pt file of a trained model "
                             "(e.g. <run>/checkpoints/protonet-image-none.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise BenchmarkError(f"cannot read backbone checkpoint {path}: {err}") from None
    for key in ("state_dict", "model"):  # a harness model file, or a training checkpoint
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise BenchmarkError(f"backbone checkpoint {path} holds a {type(state).__name__}, not a state dict")
    found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not found:
        found = {k: v for k, v in state.items() if k.startswith("blocks.")}
    if not found:
        raise BenchmarkError(f"backbone checkpoint {path} has no image backbone (no keys under {prefix!r} or "
                             f"'blocks.'; first keys: {list(state)[:5]})")
    return found


@BACKBONES.register("conv4_frozen")
class FrozenConv4(nn.Module):
    """A trained Conv-4 (Vinyals et al. 2016 / Snell et al. 2017) loaded from ``checkpoint`` and frozen.

    Args:
        image_shape: ``(C, H, W)`` of the input; must be the size the checkpoint was trained at
            for the features to mean anything (the flattened feature size is checked).
        checkpoint: the ``.pt`` file (see :func:`backbone_state`).
        hidden: channels per block of the trained network (64 for Conv-4-64).
        strided: the trained network used stride-2 convolutions.
        l2_scale: ``None`` keeps the network's features as they are; a number ``s`` L2-normalises each
            feature and multiplies it by ``s``, so that squared Euclidean distances are ``2 s^2 (1 - cos)``:
            the metric of a backbone trained with a cosine classifier (Baseline++). ``s = sqrt(5)`` gives
            nearest-prototype logits ``10 cos`` (Baseline++'s scale) up to a constant per query.

    Input ``[B, C, H, W]`` -> ``[B, out_dim]``; precomputed rows ``[B, out_dim]`` pass through.
    """

    frozen = True

    def __init__(self, image_shape: tuple[int, int, int], checkpoint: str = "", hidden: int = 64,
                 strided: bool = False, l2_scale: float | None = None) -> None:
        super().__init__()
        if l2_scale is not None and not l2_scale > 0:
            raise BenchmarkError(f"backbone_options.l2_scale {l2_scale} must be a positive number (or left out "
                                 "for the raw features)")
        self.l2_scale = None if l2_scale is None else float(l2_scale)
        if not checkpoint:
            raise BenchmarkError("backbone conv4_frozen needs backbone_options.checkpoint, the .pt file of a "
                                 "trained model")
        self.checkpoint = str(checkpoint)
        self.net = Conv4(image_shape, hidden=hidden, strided=strided, channels_last=False)
        state = backbone_state(checkpoint)
        try:
            self.net.load_state_dict(state)
        except RuntimeError as err:
            raise BenchmarkError(f"backbone checkpoint {checkpoint} does not fit conv4_frozen(hidden={hidden}, "
                                 f"strided={strided}): {str(err).splitlines()[0]}") from None
        self.net.requires_grad_(False)
        self.net.eval()
        self.out_dim = self.net.out_dim

    def train(self, mode: bool = True) -> "FrozenConv4":
        """Stays in eval mode: the batch-norm statistics of the trained network never change."""
        return super().train(False)

    def preprocessing(self, mean, std) -> str:
        """What turns the dataset's uint8 images into the input (part of the feature-cache key)."""
        scaled = "" if self.l2_scale is None else f";l2_scale={self.l2_scale!r}"
        return f"normalise(mean={tuple(mean)},std={tuple(std)});conv4_frozen{scaled}"

    @torch.no_grad()
    def precompute(self, dataset, device: torch.device | str = "cpu", batch_size: int = 256) -> Tensor:
        """Features of every item of ``dataset``, ``[n_items, out_dim]``, cached on disk (see module docstring)."""
        from tasks.features import frozen_image_features, weights_hash

        return frozen_image_features(self, "conv4_frozen", weights_hash(self.net), dataset, device, batch_size)

    def rescale(self, features: Tensor) -> Tensor:
        """``[B, out_dim]`` raw features -> what this backbone outputs (see ``l2_scale``)."""
        if self.l2_scale is None:
            return features
        return self.l2_scale * torch.nn.functional.normalize(features, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and x.shape[1] == self.out_dim:
            return x  # features precomputed by precompute()
        with torch.no_grad():
            return self.rescale(self.net(x))
