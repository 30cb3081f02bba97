"""Statistics over per-episode accuracies: means, 95% confidence intervals, paired tests."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student-t critical value for ``n`` observations (``n - 1`` degrees of freedom)."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, n - 1))


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% confidence half-width (t-distribution over episodes). ``nan`` width for n < 2."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan
    return mean, t_quantile(n) * float(values.std(ddof=1)) / math.sqrt(n)


@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of two methods on the same episodes (``a - b``)."""

    mean_difference: float
    ci95: float
    t_statistic: float
    p_value: float
    n: int


def paired_test(a: np.ndarray, b: np.ndarray) -> PairedTest:
    """Paired t-test on per-episode differences; ``a`` and ``b`` must come from one manifest."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same episodes on both sides, got {a.shape} and {b.shape}")
    diff = a - b
    mean, ci = mean_ci95(diff)
    if np.allclose(diff, diff[0]):
        return PairedTest(mean, ci, math.inf if mean else 0.0, 0.0 if mean else 1.0, len(diff))
    result = stats.ttest_rel(a, b)
    return PairedTest(mean, ci, float(result.statistic), float(result.pvalue), len(diff))
