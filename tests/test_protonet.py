"""ProtoNet on tiny episodes: its logits, equivariance, training and refusals (fusions: test_fusions.py)."""
from __future__ import annotations

import pytest
import torch

from learners.encoder import ModelSpec
from learners.protonet import ProtoNet
from learners.text import BagOfWords
from tasks.episode import Episode, TaskSetting
from tasks.errors import UnsupportedSetting

CORPUS = ["a red star", "a blue circle made of wood", "a green square by the sea"]


def make_episode(n_way=3, n_shot=2, n_query=4, query_text=True, seed=0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    enc = BagOfWords(CORPUS)
    text = lambda n: enc.prepare([CORPUS[i % 3] for i in range(n)])  # noqa: E731
    ns, nq = n_way * n_shot, n_way * n_query
    query = {"image": torch.randn(nq, 3, 32, 32, generator=g)}
    if query_text:
        query["text"] = text(nq)
    return Episode(support={"image": torch.randn(ns, 3, 32, 32, generator=g), "text": text(ns)},
                   support_labels=torch.arange(n_way).repeat_interleave(n_shot), query=query,
                   query_labels=torch.arange(n_way).repeat_interleave(n_query), class_ids=torch.arange(n_way))


def make_protonet(modalities=("image", "text"), fusion="attention", query=("image", "text")) -> ProtoNet:
    torch.manual_seed(0)
    spec = ModelSpec(modalities=modalities, setting=TaskSetting(("image", "text"), query), image_shape=(3, 32, 32),
                     backbone_options={"hidden": 8}, text_encoder=BagOfWords(CORPUS) if "text" in modalities else None,
                     fusion=fusion if len(modalities) > 1 else None)
    return ProtoNet(spec).eval()


def test_logits_are_negative_squared_distances_to_class_means():
    net = make_protonet()
    ep = make_episode()
    with torch.no_grad():
        z_s, z_q = net.encoder(ep.support), net.encoder(ep.query)
        protos = torch.stack([z_s[ep.support_labels == c].mean(0) for c in range(3)])
        expected = -((z_q[:, None] - protos[None]) ** 2).sum(-1)
        logits = net.predict(net.adapt(ep), ep.query)
    assert logits.shape == (12, 3)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("modalities,fusion", [(("image",), None), (("text",), None),
                                               (("image", "text"), "concat"), (("image", "text"), "attention")])
def test_permuting_support_labels_permutes_predictions(modalities, fusion):
    net = make_protonet(modalities, fusion)
    ep = make_episode()
    perm = torch.tensor([2, 0, 1])
    permuted = Episode(support=ep.support, support_labels=perm[ep.support_labels], query=ep.query,
                       query_labels=perm[ep.query_labels], class_ids=ep.class_ids)
    with torch.no_grad():
        a = net.predict(net.adapt(ep), ep.query)
        b = net.predict(net.adapt(permuted), ep.query)
    torch.testing.assert_close(b[:, perm], a)
    assert torch.isfinite(a).all()


def test_predict_before_adapt_raises():
    net = make_protonet()
    with pytest.raises(RuntimeError, match="before adapt"):
        net.predict(None, make_episode().query)


def test_training_step_reduces_loss_on_a_fixed_episode():
    net = make_protonet().train()
    ep = make_episode()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = net.loss([ep]).item()
    for _ in range(20):
        opt.zero_grad()
        net.loss([ep]).backward()
        opt.step()
    assert net.loss([ep]).item() < 0.5 * first


def test_protonet_refuses_a_fusion_that_needs_every_modality_on_image_only_queries():
    with pytest.raises(UnsupportedSetting, match="query side shows only image"):
        make_protonet(fusion="concat", query=("image",))


def test_attention_protonet_runs_with_image_only_queries():
    net = make_protonet(fusion="attention", query=("image",))
    ep = make_episode(query_text=False)
    with torch.no_grad():
        logits = net.predict(net.adapt(ep), ep.query)
    assert logits.shape == (12, 3) and torch.isfinite(logits).all()
