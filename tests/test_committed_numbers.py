"""The miniImageNet class-text numbers the README and findings quote, re-derived from the committed
per-episode rows (runs' rows.jsonl.gz and the end-to-end analyses' missing_text_rows.jsonl.gz): if a rows
file or a quoted figure changes, this fails."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmark.results import read_rows
from benchmark.stats import paired_test

E2E = Path(__file__).resolve().parents[1] / "results" / "miniimagenet_text" / "end_to_end"


def run_accuracy(folder: Path, learner: str, shot: int) -> np.ndarray:
    """Per-episode test accuracy ``[600]`` of ``learner`` (image queries) in a committed run's rows."""
    rows = read_rows(folder / "rows.jsonl.gz")
    rows = rows[(rows["learner"] == learner) & (rows["n_shot"] == shot) & (rows["metric"] == "accuracy")]
    return rows.sort_values("episode")["value"].to_numpy()


def with_text(folder: Path, model: str, shot: int, fraction: float) -> np.ndarray:
    """Per-episode accuracy ``[600]`` of ``model`` with class text for ``fraction`` of the test classes."""
    rows = read_rows(folder / "missing_text_rows.jsonl.gz")
    rows = rows[(rows["model"] == model) & (rows["n_shot"] == shot) & (rows["text_fraction"] == fraction)]
    return rows.sort_values("episode")["value"].to_numpy()


def points(values: np.ndarray) -> float:
    return round(100 * float(values.mean()), 2)


def gain(a: np.ndarray, b: np.ndarray) -> float:
    assert len(a) == len(b) == 600
    return round(100 * paired_test(a, b).mean_difference, 2)


def test_end_to_end_headline_and_decomposition_come_from_committed_rows():
    protonet = {s: run_accuracy(E2E, "protonet", s) for s in (1, 5)}
    fusion = {s: run_accuracy(E2E, "classfusion", s) for s in (1, 5)}
    control = {s: run_accuracy(E2E / "control", "classfusion", s) for s in (1, 5)}
    no_text = {s: with_text(E2E, "classfusion-image-none", s, 0.0) for s in (1, 5)}
    all_text = {s: with_text(E2E, "classfusion-image-none", s, 1.0) for s in (1, 5)}
    assert (points(protonet[1]), points(fusion[1]), gain(fusion[1], protonet[1])) == (31.65, 44.26, 12.61)
    np.testing.assert_array_equal(all_text[1], fusion[1])  # p = 1 is the run's own evaluation
    assert gain(control[1], protonet[1]) == 7.71 and gain(no_text[1], control[1]) == 2.60
    assert gain(all_text[1], no_text[1]) == 2.30
    assert points(no_text[5]) == 59.87 and gain(no_text[5], control[5]) == 6.82
    assert points(fusion[5]) == 44.57


def test_cosine_numbers_come_from_committed_rows():
    cosine = E2E / "cosine"
    protonet = {s: run_accuracy(cosine, "protonet", s) for s in (1, 5)}
    assert (points(protonet[1]), points(protonet[5])) == (44.90, 58.80)
    am3_without_text = {s: with_text(cosine, "am3-image-none", s, 0.0) for s in (1, 5)}
    assert gain(am3_without_text[1], protonet[1]) == 1.17 and gain(am3_without_text[5], protonet[5]) == 1.82
    # the README's 5-shot comparison: the cosine ProtoNet against classfusion with text (different runs)
    difference = 100 * (protonet[5].mean() - run_accuracy(E2E, "classfusion", 5).mean())
    assert round(difference, 2) == 14.22


@pytest.mark.parametrize("folder", ["", "seed1", "cosine", "am3_gate_reg"])
def test_missing_text_rows_hold_every_model_shot_and_fraction(folder):
    rows = read_rows(E2E / folder / "missing_text_rows.jsonl.gz")
    counts = rows.groupby(["model", "n_shot", "text_fraction"]).size()
    assert (counts == 600).all() and set(rows["text_fraction"]) == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert rows["manifest_sha256"].notna().all()


def test_readme_end_to_end_comparison_with_the_strongest_baseline():
    """The README states both shots against the cosine ProtoNet (the strongest image-only baseline at the budget);
    the runs share their test manifests, so the differences are paired."""
    cosine = {s: run_accuracy(E2E / "cosine", "protonet", s) for s in (1, 5)}
    euclidean = {s: run_accuracy(E2E, "protonet", s) for s in (1, 5)}
    fusion = {s: run_accuracy(E2E, "classfusion", s) for s in (1, 5)}
    no_text = {s: with_text(E2E, "classfusion-image-none", s, 0.0) for s in (1, 5)}
    assert (gain(fusion[1], cosine[1]), gain(fusion[5], cosine[5])) == (-0.64, -14.22)
    assert (gain(no_text[1], cosine[1]), gain(no_text[5], cosine[5])) == (-2.94, 1.07)
    assert (gain(cosine[1], euclidean[1]), gain(cosine[5], euclidean[5])) == (13.25, 14.46)
    assert gain(fusion[5], euclidean[5]) == 0.23
    seed1 = E2E / "seed1"
    assert (gain(run_accuracy(seed1, "classfusion", 1), run_accuracy(seed1, "protonet", 1)),
            gain(run_accuracy(seed1, "classfusion", 5), run_accuracy(seed1, "protonet", 5))) == (14.37, 2.38)


def test_fusion_choice_reads_validation_rows_and_matches_them():
    """The end-to-end fusion was chosen on validation classes: the committed selection names the split, its
    scores are the committed rows' means, and the configs hold its choice."""
    from benchmark.selection import Selection
    from benchmark.studies.tables import study_rows

    folder = E2E.parent / "fusion_choice"
    selection = Selection.read(folder / "selection.json")
    rows = study_rows(folder)
    assert selection.split == "val" and set(rows["split"]) == {"val"} and selection.choice == "mean"
    per_shot = rows[rows["method"].str.startswith("fusion_")].groupby(["method", "n_shot"])["value"].mean()
    for fusion, score in selection.scores.items():
        assert score == pytest.approx(per_shot[f"fusion_{fusion}"].mean(), abs=1e-9)
    assert round(100 * selection.scores["mean"], 2) == 62.73 and round(100 * selection.scores["attention"], 2) == 57.92
