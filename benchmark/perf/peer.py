"""A peer-style MAML reference: learn2learn's algorithm as its users run it, written here.

learn2learn (Arnold et al. 2020) is the library most MAML users run; this suite never imports
it. This module re-creates what its ``l2l.algorithms.MAML`` does with Finn et al.'s model, so
that :mod:`benchmark.perf` can time this suite against it in every run:

* the model is an ``nn.Module``: Finn et al.'s strided Omniglot Conv-4-64 (3x3 convolutions of
  stride 2, batch norm with batch statistics, ReLU) and a learned linear head, NCHW;
* per task, ``clone()`` copies the module with differentiable copies of its parameters
  (:func:`clone_module`, as ``l2l.clone_module``);
* ``adapt`` takes ``torch.autograd.grad`` of the support loss (``create_graph=True`` for second
  order) and substitutes the updated tensors into the clone's ``_parameters``
  (:func:`update_module`, as ``l2l.update_module``);
* the query loss of each task, divided by the meta-batch size, is back-propagated at once.

``docs/speed.md`` records a side-by-side check that this reference runs within 10% of
learn2learn 0.2.0 itself; :func:`learn2learn_step` times learn2learn when it is importable.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.episode import Episode


class FinnConv4(nn.Module):
    """Finn et al.'s Omniglot model: strided Conv-4 with batch statistics and a linear head.

    Input ``[B, C, H, W]`` (NCHW) -> logits ``[B, ways]``; the head reads the flattened
    ``hidden x 2 x 2`` feature map of a 28x28 image.
    """

    def __init__(self, shape: tuple[int, int, int] = (1, 28, 28), ways: int = 5, hidden: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(shape[0] if i == 0 else hidden, hidden, 3, stride=2, padding=1),
                       nn.BatchNorm2d(hidden, track_running_stats=False), nn.ReLU()]
        self.features = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            dim = self.features(torch.zeros(2, *shape)).shape[1]
        self.head = nn.Linear(dim, ways)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def load_from_learner(self, state: dict[str, Tensor]) -> None:
        """Copy the weights of a :class:`~learners.maml.MAML` with ``head="learned"`` on a strided
        Conv-4 (its ``state_dict()``), so that both compute the same function."""
        mine = [p for _, p in self.named_parameters()]
        theirs = [v for k, v in state.items() if k.startswith("encoder.")] + [state["head.weight"], state["head.bias"]]
        if len(mine) != len(theirs) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
            raise ValueError("the learner is not a strided Conv-4 with a learned head of the same size")
        with torch.no_grad():
            for a, b in zip(mine, theirs):
                a.copy_(b)


def clone_module(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters are differentiable clones (``l2l.clone_module``)."""
    clone = copy.copy(module)
    clone._parameters = {k: None if p is None else p.clone() for k, p in module._parameters.items()}
    clone._buffers = dict(module._buffers)
    clone._modules = {k: None if m is None else clone_module(m) for k, m in module._modules.items()}
    return clone


def update_module(module: nn.Module, updates: dict[str, Tensor]) -> None:
    """Substitute ``updates`` (parameter name -> new tensor) into ``module`` (``l2l.update_module``)."""
    for name, value in updates.items():
        *path, leaf = name.split(".")
        owner = module
        for part in path:
            owner = owner._modules[part]
        owner._parameters[leaf] = value


def adapt(clone: nn.Module, loss: Tensor, step_size: float, first_order: bool) -> None:
    """One inner SGD step on ``clone`` in place, as ``l2l.algorithms.MAML.adapt`` takes it."""
    names, params = zip(*clone.named_parameters())
    grads = torch.autograd.grad(loss, params, retain_graph=not first_order, create_graph=not first_order)
    update_module(clone, {n: p - step_size * g for n, p, g in zip(names, params, grads)})


def peer_maml_backward(model: FinnConv4, batch: Sequence[Episode], steps: int, step_size: float,
                       first_order: bool) -> None:
    """Meta-gradients of ``batch`` into ``model``'s ``.grad``, one task at a time, as learn2learn's
    users write it: clone, ``steps`` adapt steps on the support set, query loss / meta-batch size
    back-propagated."""
    for episode in batch:
        clone = clone_module(model)
        for _ in range(steps):
            adapt(clone, F.cross_entropy(clone(episode.support["image"]), episode.support_labels), step_size,
                  first_order)
        (F.cross_entropy(clone(episode.query["image"]), episode.query_labels) / len(batch)).backward()


def learn2learn_step(batch: Sequence[Episode], step_size: float, first_order: bool,
                     ways: int = 5) -> Callable[[], None] | None:
    """One meta-gradient computation with learn2learn 0.2.0 itself (``l2l.algorithms.MAML`` and
    ``l2l.vision.models.OmniglotCNN``), or ``None`` when learn2learn is not importable.

    Only for timing side by side (``docs/speed.md``); nothing else depends on it. Note that
    ``OmniglotCNN`` averages its last feature map before the head (64 features) where Finn et
    al. flatten it (256).
    """
    try:
        import learn2learn as l2l
    except ImportError:
        return None
    torch.manual_seed(0)
    maml = l2l.algorithms.MAML(l2l.vision.models.OmniglotCNN(ways), lr=step_size, first_order=first_order)

    def run() -> None:
        maml.zero_grad(set_to_none=True)
        for episode in batch:
            learner = maml.clone()
            learner.adapt(F.cross_entropy(learner(episode.support["image"]), episode.support_labels))
            (F.cross_entropy(learner(episode.query["image"]), episode.query_labels) / len(batch)).backward()

    return run
