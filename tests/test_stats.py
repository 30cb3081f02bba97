"""Confidence intervals and paired comparisons."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.tables import compare, over_seeds, summarize
from benchmark.tablewrite import wide_numbers, wide_text
from benchmark.stats import mean_ci95, paired_test


def test_ci95_matches_the_t_interval():
    values = np.array([0.6, 0.8, 0.7, 0.9, 0.5])
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(0.7)
    assert ci == pytest.approx(2.776445 * values.std(ddof=1) / np.sqrt(5), rel=1e-5)  # t(0.975, 4)


def test_paired_test_uses_per_episode_differences():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.9, 200)
    better = np.clip(base + 0.05 + rng.normal(0, 0.01, 200), 0, 1)
    result = paired_test(better, base)
    assert result.mean_difference == pytest.approx(np.mean(better - base))
    assert result.p_value < 1e-10 and result.t_statistic > 0
    with pytest.raises(ValueError, match="same episodes"):
        paired_test(better[:10], base)


def _rows(method: tuple[str, str], values, sha="m1", learner="protonet") -> list[dict]:
    return [{"run_id": "r", "config": "c", "learner": learner, "modalities": method[0], "fusion": method[1],
             "setting": "s", "dataset": "d", "seed": 0, "n_way": 5, "n_shot": 1, "n_query": 15, "episode": i,
             "metric": "accuracy", "value": v, "manifest_sha256": sha} for i, v in enumerate(values)]


def _wide(rows: pd.DataFrame) -> pd.DataFrame:
    comparison = compare(rows)
    return wide_text(wide_numbers(over_seeds(summarize(rows)), comparison, "accuracy"), "accuracy", "image")


def test_comparison_pairs_methods_with_the_image_only_baseline():
    base = [0.5, 0.6, 0.7, 0.8]
    rows = pd.DataFrame(_rows(("image", "none"), base) + _rows(("image+text", "attention"), [0.6, 0.7, 0.8, 0.9])
                        + _rows(("text", "none"), [0.5, 0.5, 0.5, 0.5]))
    table = compare(rows)
    fused = table[table["fusion"] == "attention"].iloc[0]
    assert fused["difference"] == pytest.approx(10.0) and fused["baseline_accuracy"] == pytest.approx(65.0)
    assert set(table["modalities"]) == {"image+text", "text"}
    wide = _wide(rows)
    assert wide.loc[wide["method"] == "image", "5w1s vs baseline"].iloc[0] == "(baseline)"
    assert wide.loc[wide["method"] == "image+text / attention", "5w1s vs baseline"].iloc[0].startswith("+10.00")
    lonely = pd.DataFrame(_rows(("image+text", "attention"), [0.6, 0.7, 0.8, 0.9], learner="maml"))
    assert _wide(lonely)["5w1s vs baseline"].tolist() == ["-"]  # no image-only maml to pair with


def test_methods_on_different_manifests_are_never_paired():
    rows = pd.DataFrame(_rows(("image", "none"), [0.5, 0.6, 0.7, 0.8], sha="m1")
                        + _rows(("image+text", "attention"), [0.6, 0.7, 0.8, 0.9], sha="m2"))
    assert compare(rows).empty
