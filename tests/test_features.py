"""The on-disk feature cache of frozen image encoders (tasks/features.py, ResNet18.precompute)."""
from __future__ import annotations

import pytest
import torch

from learners.backbones import ResNet18
from tasks.datasets.shapes import generate
from tasks.episode import EpisodeLoader, TaskSetting
from tasks.features import cached_features, feature_path


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test starts with an empty feature cache."""
    monkeypatch.setenv("MMFS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small():
    return generate(n_classes=4, items_per_class=3, image_size=16, seed=3)


def _frozen(small, **options) -> ResNet18:
    torch.manual_seed(0)
    return ResNet18(small.image_shape, pretrained=False, frozen=True, **options)


def _count_computes(monkeypatch) -> list:
    calls = []
    real = cached_features

    def spy(key, compute, directory=None):
        def counted():
            calls.append(dict(key))
            return compute()
        return real(key, counted, directory)

    monkeypatch.setattr("tasks.features.cached_features", spy)
    return calls


def test_second_use_hits_the_cache(small, monkeypatch):
    calls = _count_computes(monkeypatch)
    first = _frozen(small).precompute(small)
    assert first.shape == (len(small.labels), 512) and len(calls) == 1
    second = _frozen(small).precompute(small)  # a new instance with the same weights: a later run
    assert len(calls) == 1, "the second use recomputed instead of reading the cache"
    assert torch.equal(first, second)
    assert feature_path(calls[0]).exists()


def test_features_match_the_network_on_episode_inputs(small):
    net = _frozen(small)
    features = net.precompute(small)
    loader = EpisodeLoader(small.images, small.mean, small.std, setting=TaskSetting(("image",), ("image",)))
    items = torch.tensor([0, 5, 11])
    with torch.no_grad():
        direct = net(loader.side(items, ("image",))["image"])
    torch.testing.assert_close(features[items], direct, rtol=1e-4, atol=1e-5)
    assert torch.equal(net(features[items]), features[items])  # precomputed rows pass through


def test_changed_weights_or_preprocessing_or_data_invalidate(small, monkeypatch):
    calls = _count_computes(monkeypatch)
    base = _frozen(small).precompute(small)
    assert len(calls) == 1
    changed = _frozen(small)
    with torch.no_grad():
        changed.model.conv1.weight.add_(0.01)
    assert not torch.equal(changed.precompute(small), base) and len(calls) == 2
    _frozen(small, input_size=24).precompute(small)  # other preprocessing
    assert len(calls) == 3
    other = generate(n_classes=4, items_per_class=3, image_size=16, seed=4)  # other contents
    _frozen(other).precompute(other)
    assert len(calls) == 4
    assert calls[0]["weights"] != calls[1]["weights"]
    assert calls[0]["preprocessing"] != calls[2]["preprocessing"]
    assert calls[0]["dataset"] != calls[3]["dataset"]
    _frozen(small).precompute(small)  # the original is still cached
    assert len(calls) == 4


def test_harness_feeds_cached_features_to_a_frozen_backbone(tiny_dataset, tmp_path):
    from benchmark.config import ExperimentConfig, merge
    from benchmark.runner import Benchmark

    cfg = merge(ExperimentConfig(), {
        "learners": ["protonet"], "modalities": ["image"], "backbone": "resnet18",
        "backbone_options": {"pretrained": False, "frozen": True}, "out": str(tmp_path),
        "train": {"episodes": 0}, "eval": {"ways": [5], "shots": [1], "episodes": 3,
                                           "support_modalities": "image", "query_modalities": "image"},
    }, "test")
    bench = Benchmark(cfg).prepare(dataset=tiny_dataset)
    learner = bench.build_learner(bench.methods[0])
    loader = bench.episode_loader(learner)
    assert loader.image_features is not None and loader.image_features.shape == (len(tiny_dataset.labels), 512)
    image = loader.side(torch.tensor([0, 1]), ("image",))["image"]
    assert image.shape == (2, 512)
    conv = merge(cfg, {"backbone": "conv4", "backbone_options": {"hidden": 8}}, "test")
    bench.cfg = conv
    assert bench.episode_loader(bench.build_learner(bench.methods[0])).image_features is None
