"""The textbook implementations that the fast paths are timed against (:mod:`benchmark.perf`) and
tested against (``tests/test_maml.py``, ``tests/test_speed.py``)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from learners.maml import MAML
from tasks.episode import Episode


def textbook_conv4(shape: tuple[int, int, int], hidden: int = 64) -> nn.Sequential:
    """Conv-4 as papers write it: NCHW, conv -> batch norm -> ReLU -> max-pool (the reference)."""
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [nn.Conv2d(shape[0] if i == 0 else hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden),
                   nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten())


def reference_maml_backward(learner: MAML, batch: Sequence[Episode], steps: int, step_size: float,
                            first_order: bool) -> None:
    """The plain per-task loop (as learn2learn does it); accumulates meta-gradients in ``.grad``.

    For each task: clone the parameters, take ``steps`` inner SGD steps with
    ``torch.autograd.grad(create_graph=not first_order)`` on the support loss, and call
    ``backward`` on the task's query loss divided by the meta-batch size.
    """
    for episode in batch:
        params = {}
        for name, value in learner.initial_params(episode.n_way).items():
            if not value.requires_grad:
                value = value.requires_grad_()
            params[name] = value.clone()
        names = [n for n in params if learner.is_inner(n)]
        for _ in range(steps):
            loss = F.cross_entropy(learner.logits(params, episode.support), episode.support_labels)
            # allow_unused: late fusion's logit weights are read outside the model's forward
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=not first_order,
                                        allow_unused=True)
            params = {**params, **{n: params[n] - step_size * g for n, g in zip(names, grads) if g is not None}}
        query_loss = F.cross_entropy(learner.logits(params, episode.query), episode.query_labels)
        (query_loss / len(batch)).backward()
