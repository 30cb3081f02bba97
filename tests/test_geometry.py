"""AM3's prototype geometry (benchmark/studies/geometry.py) on hand-built features."""
from __future__ import annotations

import pytest
import torch

from benchmark.studies.geometry import markdown, prototype_geometry
from tasks.errors import BenchmarkError

# three classes of two items each in 2-d: class means (0, 0), (3, 0) and (0, 4)
FEATURES = torch.tensor([[-1.0, 0], [1, 0], [3, -1], [3, 1], [0, 3], [0, 5]])
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
MEANS = torch.tensor([[0.0, 0], [3, 0], [0, 4]])
TEXT = torch.eye(3)  # one-hot class text: the stub maps it to a chosen point per class


def stub(points: torch.Tensor, gate: float):
    return lambda text: (text @ points, torch.full((len(text), 1), gate))


def test_text_prototypes_at_the_class_means_are_at_distance_zero():
    row = prototype_geometry(stub(MEANS, 0.25), FEATURES, LABELS, TEXT, [0, 1, 2])
    assert row["text_prototype_distance_to_its_class_mean"] == pytest.approx(0)
    assert row["text_prototype_distance_between_classes"] == pytest.approx(row[
        "image_class_mean_distance_between_classes"])
    assert row["image_class_mean_distance_between_classes"] == pytest.approx((3 + 4 + 5) / 3)
    assert row["image_feature_norm"] == pytest.approx(float(FEATURES.norm(dim=1).mean()))
    assert row["lambda"] == pytest.approx(0.25) and row["classes"] == 3


def test_text_prototypes_far_from_the_images_are_measured_far():
    far = MEANS + torch.tensor([100.0, 0])
    row = prototype_geometry(stub(far, 0.9), FEATURES, LABELS, TEXT, [0, 2])
    assert row["text_prototype_distance_to_its_class_mean"] == pytest.approx(100)
    assert row["text_prototype_norm"] == pytest.approx((100 + (100 ** 2 + 16) ** 0.5) / 2)
    assert row["image_class_mean_distance_between_classes"] == pytest.approx(4)
    # a 1-shot prototype is one of the class's items: its distance lies between the items' extremes
    assert 2 <= row["image_1shot_prototype_distance_between_classes"] <= 6


def test_one_class_is_refused_and_markdown_has_a_line_per_row():
    with pytest.raises(BenchmarkError, match="at least two classes"):
        prototype_geometry(stub(MEANS, 0.5), FEATURES, LABELS, TEXT, [1])
    row = prototype_geometry(stub(MEANS, 0.5), FEATURES, LABELS, TEXT, [0, 1, 2])
    table = markdown([{"method": "am3", "n_shot": 1, "state": "init", "split": "test", **row}] * 2)
    assert len(table.strip().splitlines()) == 4 and "| am3 | 1 | init | test |" in table
