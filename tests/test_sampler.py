"""Sampler invariants and fixed manifests."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.episode import EpisodeLoader, TaskSetting
from tasks.errors import BenchmarkError
from tasks.sampler import EpisodeManifest, EpisodeSampler


def test_splits_are_disjoint_and_cover_all_classes(tiny_dataset):
    splits = [set(tiny_dataset.split_classes(s).tolist()) for s in ("train", "val", "test")]
    assert not (splits[0] & splits[1]) and not (splits[0] & splits[2]) and not (splits[1] & splits[2])
    assert set().union(*splits) == set(range(tiny_dataset.n_classes))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_episode_counts_split_membership_and_disjoint_items(tiny_dataset, split):
    sampler = EpisodeSampler(tiny_dataset, split, n_way=5, n_shot=3, n_query=4)
    rng = np.random.default_rng(0)
    allowed = set(tiny_dataset.split_classes(split).tolist())
    for i in range(50):
        spec = sampler.sample(rng, i)
        assert len(spec.class_ids) == 5 and len(set(spec.class_ids)) == 5
        assert set(spec.class_ids) <= allowed
        assert all(len(r) == 3 for r in spec.support) and all(len(r) == 4 for r in spec.query)
        support, query = np.ravel(spec.support), np.ravel(spec.query)
        assert not set(support) & set(query)
        assert len(set(support)) == len(support) and len(set(query)) == len(query)
        for way, cls in enumerate(spec.class_ids):  # every item belongs to its way's class
            assert (tiny_dataset.labels[list(spec.support[way]) + list(spec.query[way])] == cls).all()


def test_sampling_is_determined_by_the_generator(tiny_dataset):
    sampler = EpisodeSampler(tiny_dataset, "train", 5, 1, 2)
    a = [sampler.sample(np.random.default_rng(7), i) for i in range(5)]
    b = [sampler.sample(np.random.default_rng(7), i) for i in range(5)]
    c = [sampler.sample(np.random.default_rng(8), i) for i in range(5)]
    assert a == b and a != c


def test_loaded_episode_shapes_labels_and_modalities(tiny_dataset):
    spec = EpisodeSampler(tiny_dataset, "test", 4, 2, 3).sample(np.random.default_rng(0))
    text = np.zeros((len(tiny_dataset.labels), 6), dtype=np.int64)
    import torch

    loader = EpisodeLoader(tiny_dataset.images, tiny_dataset.mean, tiny_dataset.std, torch.as_tensor(text),
                           setting=TaskSetting(("image", "text"), ("image",)))
    ep = loader.load(spec)
    assert ep.support["image"].shape == (8, 3, 32, 32) and ep.support["text"].shape == (8, 6)
    assert set(ep.query) == {"image"} and ep.query["image"].shape == (12, 3, 32, 32)
    assert ep.support_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ep.query_labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert abs(float(ep.support["image"].mean())) < 1.0  # normalised


def test_too_many_ways_or_items_are_clear_errors(tiny_dataset):
    n_test = len(tiny_dataset.split_classes("test"))
    with pytest.raises(BenchmarkError, match=f"n_way={n_test + 1} is larger than the {n_test} classes"):
        EpisodeSampler(tiny_dataset, "test", n_test + 1, 1, 1)
    with pytest.raises(BenchmarkError, match="n_shot \\+ n_query = 5 \\+ 16 = 21 exceeds"):
        EpisodeSampler(tiny_dataset, "test", 5, 5, 16)
    with pytest.raises(BenchmarkError, match="n_shot must be an integer >= 1"):
        EpisodeSampler(tiny_dataset, "test", 5, 0, 1)


def test_manifest_hash_is_stable_and_verified(tiny_dataset, tmp_path):
    m1 = EpisodeManifest.generate(tiny_dataset, "test", 5, 1, 3, n_episodes=20, seed=3)
    m2 = EpisodeManifest.generate(tiny_dataset, "test", 5, 1, 3, n_episodes=20, seed=3)
    m3 = EpisodeManifest.generate(tiny_dataset, "test", 5, 1, 3, n_episodes=20, seed=4)
    assert m1.sha256 == m2.sha256 != m3.sha256
    path = m1.save(tmp_path / "m.json")
    assert EpisodeManifest.load(path, tiny_dataset).sha256 == m1.sha256
    # the hash is a pure function of the contents: a known value guards the canonical form
    assert len(m1.sha256) == 64
    tampered = path.read_text().replace('"query": [[', '"query": [[9999, ', 1)
    path.write_text(tampered)
    with pytest.raises(BenchmarkError, match="does not match its stored sha256"):
        EpisodeManifest.load(path)


def test_manifest_get_reuses_the_saved_file(tiny_dataset, tmp_path):
    m1, p1 = EpisodeManifest.get(tmp_path, tiny_dataset, "test", 5, 1, 3, 10, 0)
    mtime = p1.stat().st_mtime_ns
    m2, p2 = EpisodeManifest.get(tmp_path, tiny_dataset, "test", 5, 1, 3, 10, 0)
    assert p1 == p2 and m1.sha256 == m2.sha256 and p2.stat().st_mtime_ns == mtime


def test_manifest_get_uses_a_gzipped_copy_instead_of_regenerating(tiny_dataset, tmp_path):
    """A manifest kept as ``<name>.json.gz`` (how committed results store them) is loaded, verified
    and used by ``get``; nothing is regenerated beside it; a damaged one names its file."""
    import gzip

    m1, p1 = EpisodeManifest.get(tmp_path, tiny_dataset, "test", 5, 1, 3, 10, 0)
    packed = p1.with_name(p1.name + ".gz")
    packed.write_bytes(gzip.compress(p1.read_bytes()))
    p1.unlink()
    m2, p2 = EpisodeManifest.get(tmp_path, tiny_dataset, "test", 5, 1, 3, 10, 0)
    assert p2 == packed and m2.sha256 == m1.sha256 and not p1.exists()
    packed.write_bytes(packed.read_bytes()[:40])
    with pytest.raises(BenchmarkError, match=f"cannot read episode manifest {packed}"):
        EpisodeManifest.get(tmp_path, tiny_dataset, "test", 5, 1, 3, 10, 0)


def test_loader_side_gathers_the_same_items_from_any_index_type():
    """``EpisodeLoader.side`` (``index_select``) returns the normalised images of the given items,
    whether they come as a tensor, a list or an int32 NumPy array."""
    import torch

    images = np.random.default_rng(0).integers(0, 256, size=(10, 1, 3, 3), dtype=np.uint8)
    loader = EpisodeLoader(images, (0.5,), (0.25,), setting=TaskSetting(("image",), ("image",)))
    expected = (torch.as_tensor(images[[3, 1, 3]]).float() / 255 - 0.5) / 0.25
    for items in (torch.tensor([3, 1, 3]), [3, 1, 3], np.array([3, 1, 3], dtype=np.int32)):
        torch.testing.assert_close(loader.side(items, ("image",))["image"], expected)
