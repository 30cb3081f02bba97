"""Behaviour of every registered fusion, discovered from ``FUSIONS.names()``, and of particular ones."""
from __future__ import annotations

import pytest
import torch

import learners  # noqa: F401
from learners import FUSIONS
from learners.backbones import ResNet18
from learners.fusions import AttentionFusion, ConcatFusion
from tasks.errors import UnsupportedSetting

DIMS = {"image": 6, "text": 4}


def features(batch: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, d, generator=g) for m, d in DIMS.items()}


@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusion_shapes_and_missing_modalities(name):
    torch.manual_seed(0)
    fusion = FUSIONS.get(name)(DIMS)
    x = features()
    out = fusion(x)
    assert out.shape == (5, fusion.out_dim) and torch.isfinite(out).all()
    for present in ("image", "text"):
        if fusion.accepts({present}):
            assert fusion({present: x[present]}).shape == (5, fusion.out_dim)
        else:
            with pytest.raises(UnsupportedSetting, match="missing"):
                fusion({present: x[present]})


@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusion_needs_two_modalities(name):
    with pytest.raises(UnsupportedSetting):
        FUSIONS.get(name)({"image": 6})


def test_lowrank_missing_modality_keeps_only_the_appended_one():
    torch.manual_seed(0)
    fusion = FUSIONS.get("lowrank")(DIMS, dim=8, rank=3)
    x = features()
    torch.testing.assert_close(fusion({"image": x["image"]}),
                               fusion({"image": x["image"], "text": torch.zeros_like(x["text"])}))


def test_film_starts_as_identity_and_gated_without_text_is_the_image():
    x = features()
    assert torch.equal(FUSIONS.get("film")(DIMS)(x), x["image"])
    assert torch.equal(FUSIONS.get("gated")({"image": 6, "text": 4})({"image": x["image"]}), x["image"])


def test_late_fusion_averages_per_modality_logits():
    fusion = FUSIONS.get("late")(DIMS, weights={"image": 3.0, "text": 1.0})
    x, y = fusion(features(5, 0)), fusion(features(3, 1))
    score = lambda a, b: -torch.cdist(a, b)  # noqa: E731
    expected = 0.75 * score(x[:, :6], y[:, :6]) + 0.25 * score(x[:, 6:], y[:, 6:])
    torch.testing.assert_close(fusion.compare(score, x, y), expected)
    learned = FUSIONS.get("late")(DIMS)
    assert learned.modality_weights().tolist() == [0.5, 0.5] and learned.weight_logits.requires_grad
    with pytest.raises(ValueError, match="weight"):
        FUSIONS.get("late")(DIMS, weights={"image": 1.0})


def test_frozen_resnet18_backbone_stays_frozen():
    net = ResNet18((3, 32, 32), pretrained=False, frozen=True)
    assert net.out_dim == 512 and not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training and not net.model.training  # batch norm statistics never change
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 512)
    assert ResNet18((1, 28, 28), frozen=False)(torch.randn(2, 1, 28, 28)).requires_grad


def test_attention_weights_are_a_softmax_over_present_modalities():
    fusion = AttentionFusion({"image": 5, "text": 3}, dim=4)
    out = fusion({"image": torch.randn(6, 5), "text": torch.randn(6, 3)})
    assert out.shape == (6, 4)
    w = fusion.last_weights
    assert w.shape == (6, 2) and torch.allclose(w.sum(1), torch.ones(6)) and (w > 0).all()
    # with text missing, the fused vector is exactly the projected image feature
    x = torch.randn(6, 5)
    torch.testing.assert_close(fusion({"image": x}), fusion.project["image"](x))


def test_concat_fusion_refuses_a_missing_modality():
    fusion = ConcatFusion({"image": 5, "text": 3})
    assert fusion({"image": torch.randn(2, 5), "text": torch.randn(2, 3)}).shape == (2, 8)
    with pytest.raises(UnsupportedSetting, match="needs every modality"):
        fusion({"image": torch.randn(2, 5)})
