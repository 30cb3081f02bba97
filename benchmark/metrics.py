"""The metric registry: every per-episode metric computed from query logits and labels.

A metric is a function ``(logits [Q, N], labels [Q]) -> float`` registered with one decorator that
also says how it is shown (scale, unit, direction)::

    @metric("accuracy", scale=100, unit="%", higher_is_better=True)
    def accuracy(logits, labels): ...

Rows store the raw value (a fraction for accuracy); tables multiply by ``scale`` and name their
columns after the metric (``accuracy``, ``accuracy_ci95``, ``nll``, ``nll_ci95``...).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tasks.registry import Registry

SCHEMA_VERSION = 2
"""Version of ``rows.jsonl`` and ``run.json``. 1 (no ``schema_version`` field): rows carried the run's
setting on every method and the negative log-likelihood as ``loss``; 2: each row carries the setting its
method was tested in, metrics come from this registry."""

MetricFn = Callable[[Tensor, Tensor], float]


@dataclass(frozen=True)
class Metric:
    """One registered metric and how to show it."""

    name: str
    fn: MetricFn
    scale: float
    unit: str
    higher_is_better: bool
    description: str

    def __call__(self, logits: Tensor, labels: Tensor) -> float:
        return self.fn(logits, labels)

    @property
    def label(self) -> str:
        """Axis and column label, e.g. ``accuracy (%)`` or ``nll (nats)``."""
        return f"{self.name} ({self.unit})" if self.unit else self.name


METRICS: Registry[Metric] = Registry("metric")


def metric(name: str, *, scale: float = 1.0, unit: str = "", higher_is_better: bool = True
           ) -> Callable[[MetricFn], MetricFn]:
    """Register ``fn(logits [Q, N], labels [Q]) -> float`` as metric ``name``."""

    def decorator(fn: MetricFn) -> MetricFn:
        doc = (fn.__doc__ or name).strip().splitlines()[0]
        METRICS.register(name)(Metric(name, fn, scale, unit, higher_is_better, doc))
        return fn

    return decorator


def get_metric(name: str) -> Metric:
    """The registered metric ``name``; an unknown name raises an error naming the close ones."""
    return METRICS.get(name)


def compute_metrics(logits: Tensor, labels: Tensor, names: list[str] | None = None) -> dict[str, float]:
    """Every registered metric (or those in ``names``) of one episode.

    Args:
        logits: ``[Q, N]`` query logits. labels: ``[Q]`` query labels in ``[0, N)``.
    """
    logits = logits.detach().double()
    return {name: METRICS.get(name)(logits, labels) for name in (names or METRICS.names())}


@metric("accuracy", scale=100, unit="%")
def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of queries whose highest logit is the true class."""
    return (logits.argmax(-1) == labels).double().mean().item()


@metric("nll", unit="nats", higher_is_better=False)
def negative_log_likelihood(logits: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the true class under softmax(logits) (cross-entropy)."""
    return torch.nn.functional.cross_entropy(logits, labels).item()


@metric("ece", scale=100, unit="%", higher_is_better=False)
def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 10) -> float:
    """Expected calibration error of the episode's queries (10 equal-width confidence bins)."""
    confidence, predicted = logits.softmax(-1).max(-1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype, device=confidence.device)
    which = torch.bucketize(confidence, edges[1:-1], right=True)  # bin i holds (edges[i], edges[i+1]]
    total = confidence.new_zeros(())
    for b in which.unique():
        inside = which == b
        total += inside.double().mean() * (confidence[inside].mean() - correct[inside].mean()).abs()
    return total.item()
