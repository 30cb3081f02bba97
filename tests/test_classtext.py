"""Class text in prototypes: AM3's variants, the class-text fusions, the missing-text mask,
gate tracking and the frozen Conv-4 loaded from a checkpoint (tiny shapes dataset)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import learners  # noqa: F401  (registers the built-ins)
from benchmark.config import TrainConfig, component_config
from benchmark.evaluate import evaluate
from benchmark.methods import Method
from benchmark.studies import classtext
from benchmark.training import meta_train
from learners import LEARNERS, ModelSpec
from learners.base import class_means
from learners.pretrained import FrozenConv4
from learners.text import BagOfWords
from tasks.episode import EpisodeLoader, TaskSetting
from tasks.errors import BenchmarkError, UnsupportedSetting
from tasks.sampler import EpisodeManifest, EpisodeSampler

IMAGE = TaskSetting(("image",), ("image",))


@pytest.fixture(scope="module")
def world(tiny_dataset):
    data = tiny_dataset
    text = BagOfWords(data.class_texts, dim=16)
    loader = EpisodeLoader(data.images, data.mean, data.std, None, text.prepare(data.class_texts), IMAGE)
    manifest = EpisodeManifest.generate(data, "test", 3, 2, 3, 6, seed=0)
    return data, text, loader, manifest


def build(world, name: str, backbone: str = "conv4", backbone_options: dict | None = None, **options):
    data = world[0]
    cls = LEARNERS.get(name)
    torch.manual_seed(0)
    text = BagOfWords(data.class_texts, dim=16)  # trainable: a fresh one per learner
    spec = ModelSpec(modalities=("image",), setting=IMAGE, image_shape=data.image_shape, backbone=backbone,
                     backbone_options=backbone_options or {"hidden": 8}, text_encoder=text)
    return cls(spec, component_config(cls.Config, options, f"learner_options.{name}"))


def episode(world, index: int = 0):
    return world[2].load(world[3].episodes[index])


@pytest.mark.parametrize("options, match", [
    ({"gate_target": 1.5}, "gate_target must be in"), ({"text_dropout": -0.1}, "text_dropout must be in"),
    ({"gate_reg": -1.0}, "gate_reg must be >= 0"),
])
def test_am3_variant_options_are_checked(world, options, match):
    with pytest.raises(BenchmarkError, match=match):
        build(world, "am3", **options)


def test_missing_text_gives_the_image_prototype(world):
    am3 = build(world, "am3").eval()
    ep = episode(world)
    with torch.no_grad():
        image = class_means(am3.embed(ep.support), ep.support_labels, ep.n_way)
        mixed = am3.adapt(ep)
        assert not torch.allclose(mixed, image)
        available = torch.ones(world[0].n_classes, dtype=torch.bool)
        available[ep.class_ids[1]] = False
        am3.set_class_text_available(available)
        partial = am3.adapt(ep)
    torch.testing.assert_close(partial[1], image[1])
    torch.testing.assert_close(partial[[0, 2]], mixed[[0, 2]])


def test_text_dropout_only_in_training(world):
    am3 = build(world, "am3", text_dropout=1.0)
    ep = episode(world)
    am3.train()
    _, gate = am3.mixed(ep)
    assert torch.equal(gate, torch.ones_like(gate))  # every class's text dropped: ProtoNet prototypes
    am3.eval()
    _, gate = am3.mixed(ep)
    assert (gate < 1).all()


def test_gate_regulariser_pulls_lambda_to_its_target(world):
    ep = world[2].load(EpisodeSampler(world[0], "train", 3, 2, 3).sample(np.random.default_rng(1)))
    plain, held = build(world, "am3", gate_bias=-4.0), build(world, "am3", gate_bias=-4.0, gate_reg=10.0)
    assert held.loss([ep]).item() > plain.loss([ep]).item()  # lambda ~ 0.02, far from 0.5
    held.loss([ep]).backward()
    assert held.gate[-1].bias.grad.item() < 0  # descent raises the gate's bias, i.e. lambda


def test_classfusion_fuses_class_text_and_rejects_fusions_needing_text_on_queries(world):
    ep = episode(world)
    for fusion in ("attention", "mean", "gated", "film", "lowrank"):
        learner = build(world, "classfusion", fusion=fusion).eval()
        with torch.no_grad():
            logits = learner.predict(learner.adapt(ep), ep.query)
        assert logits.shape == (9, 3) and logits.isfinite().all()
    for fusion in ("concat", "late"):
        with pytest.raises(UnsupportedSetting, match="image-only queries"):
            build(world, "classfusion", fusion=fusion)
    learner = build(world, "classfusion", fusion="attention").eval()
    learner.set_class_text_available(torch.zeros(world[0].n_classes, dtype=torch.bool))
    with torch.no_grad():
        image = class_means(learner.embed(ep.support), ep.support_labels, ep.n_way)
        torch.testing.assert_close(learner.adapt(ep), learner.fusion({"image": image}))


def test_text_available_is_nested_and_checked(tiny_dataset):
    test = tiny_dataset.split_classes("test")
    masks = {p: classtext.text_available(tiny_dataset, p, seed=3) for p in classtext.TEXT_FRACTIONS}
    for p, mask in masks.items():
        assert int(mask[test].sum()) == round(p * len(test))
        assert mask[tiny_dataset.split_classes("train")].all()
    assert (masks[0.25] <= masks[0.5]).all() and (masks[0.5] <= masks[0.75]).all()
    with pytest.raises(BenchmarkError, match="1.5 must be in"):
        classtext.text_available(tiny_dataset, 1.5, seed=0)


def test_missing_text_curve_ends_at_protonet(world):
    data, _, loader, manifest = world
    am3, proto = build(world, "am3"), build(world, "protonet")
    proto.encoder.load_state_dict(am3.encoder.state_dict())
    curve = classtext.evaluate_missing_text(am3, loader, manifest, data, [1.0, 0.0], torch.device("cpu"), seed=0)
    np.testing.assert_array_equal(curve[0.0], evaluate(proto, loader, manifest, torch.device("cpu"))["accuracy"])
    np.testing.assert_array_equal(curve[1.0], evaluate(am3, loader, manifest, torch.device("cpu"))["accuracy"])
    assert am3.class_text_available is None  # the mask is removed afterwards
    with pytest.raises(BenchmarkError, match="uses no class text"):
        classtext.evaluate_missing_text(proto, loader, manifest, data, [0.5], torch.device("cpu"), seed=0)


def test_gate_tracking_records_and_leaves_training_unchanged(world, tmp_path):
    data, _, loader, _ = world
    cfg = TrainConfig(way=3, shot=2, query=3, episodes=6, val_every=0, checkpoint_every=0)
    sampler = EpisodeSampler(data, "train", 3, 2, 3)
    manifests = {s: EpisodeManifest.generate(data, s, 3, 1, 2, 2, seed=0) for s in ("train", "val", "test")}
    states = []
    for tracked in (False, True):
        am3 = build(world, "am3")
        tracker = classtext.GateTracker(am3, loader, data, manifests, tmp_path / "gates.jsonl", every=3)
        meta_train(am3, Method("am3", ("image",), None), cfg, lambda: loader,
                   classtext.TrackingSampler(sampler, tracker) if tracked else sampler, None,
                   torch.device("cpu"), 0, tmp_path / f"ck{tracked}.pt", resume=False)
        states.append(am3.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key])
    records = [r for r in tracker.records]
    assert [(r["step"], r["split"]) for r in records] == [(s, sp) for s in (0, 3) for sp in ("train", "val", "test")]
    for r in records:
        assert len(r["gates"]) == len(data.split_classes(r["split"]))
        assert 0 <= r["gate_min"] <= r["gate_mean"] <= r["gate_max"] <= 1
        assert 0 <= r["text_accuracy"] <= 1 and 0 <= r["image_accuracy"] <= 1
    assert len((tmp_path / "gates.jsonl").read_text().splitlines()) == 6


def test_gate_tracking_keeps_a_collapsed_gate_per_class(world, tmp_path):
    """A gate at the text side (lambda ~ 1e-7, as end to end) is recorded per class, not rounded to 0."""
    data, _, loader, _ = world
    am3 = build(world, "am3")
    with torch.no_grad():
        am3.gate[-1].weight.zero_()
        am3.gate[-1].bias.fill_(-16.0)  # sigmoid(-16) = 1.1e-7
    manifests = {"train": EpisodeManifest.generate(data, "train", 3, 1, 2, 1, seed=0)}
    tracker = classtext.GateTracker(am3, loader, data, manifests, tmp_path / "gates.jsonl", every=1)
    tracker(1)
    (record,) = tracker.records
    assert record["gate_max"] == pytest.approx(1.125e-7, rel=1e-2)
    assert all(g == pytest.approx(record["gate_mean"], rel=1e-3) for g in record["gates"].values())


def test_separation_loss_of_a_text_side_that_tells_no_class_apart(world):
    """g(t) = 0 for every class: the text side scores chance, log(n_way) in loss; the image side is the
    learner's own ProtoNet loss."""
    data, _, loader, _ = world
    am3 = build(world, "am3")
    with torch.no_grad():
        am3.transform[-1].weight.zero_()
        am3.transform[-1].bias.zero_()
    manifest = EpisodeManifest.generate(data, "train", 3, 1, 2, 2, seed=0)
    measures = classtext.separation(am3, loader, manifest)
    assert measures["text_loss"] == pytest.approx(np.log(3), rel=1e-5)
    assert measures["text_accuracy"] == pytest.approx(1 / 3)  # ties go to the first class, one in three queries
    assert measures["text_norm"] == 0 and measures["image_norm"] > 0
    image_losses = []
    for spec in manifest.episodes:
        episode = loader.load(spec)
        prototypes = class_means(am3.embed(episode.support), episode.support_labels, episode.n_way)
        logits = am3.logits(am3.embed(episode.query), prototypes)
        image_losses.append(torch.nn.functional.cross_entropy(logits, episode.query_labels).item())
    assert measures["image_loss"] == pytest.approx(np.mean(image_losses), rel=1e-5)


def test_frozen_conv4_loads_a_trained_backbone(world, tmp_path):
    proto = build(world, "protonet")
    path = tmp_path / "protonet.pt"
    torch.save(proto.state_dict(), path)
    frozen = build(world, "am3", backbone="conv4_frozen", backbone_options={"checkpoint": str(path), "hidden": 8})
    backbone = frozen.encoder.encoders["image"]
    assert isinstance(backbone, FrozenConv4) and not any(p.requires_grad for p in backbone.parameters())
    frozen.train()
    assert not backbone.net.training  # batch norm keeps the trained statistics
    ep = episode(world)
    proto.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(ep.query["image"]), proto.embed(ep.query))
    features = backbone.precompute(world[0])
    assert features.shape == (len(world[0].labels), backbone.out_dim)
    assert torch.equal(backbone.precompute(world[0]), features)  # second call: from the cache
    from benchmark.checkpoint import save_model

    save_model(tmp_path / "model.pt", proto, {"learner": "protonet"})  # the harness's model-file format
    assert torch.equal(FrozenConv4(world[0].image_shape, checkpoint=str(tmp_path / "model.pt"), hidden=8)(
        ep.query["image"]), backbone(ep.query["image"]))
    torch.save({"other": torch.zeros(1)}, tmp_path / "bad.pt")
    for checkpoint, match in ((tmp_path / "none.pt", "does not exist"), (tmp_path / "bad.pt", "no image backbone")):
        with pytest.raises(BenchmarkError, match=match):
            FrozenConv4(world[0].image_shape, checkpoint=str(checkpoint), hidden=8)
    with pytest.raises(BenchmarkError, match="does not fit conv4_frozen"):
        FrozenConv4(world[0].image_shape, checkpoint=str(path), hidden=16)


def test_am3_variant_options_leave_run_ids_unchanged(monkeypatch):
    """The new options are off by default (same numbers), so existing AM3 runs keep their ids."""
    from benchmark.runid import code_identity
    from learners.am3 import AM3

    assert "am3" not in code_identity(["am3"]).get("learner_defaults", {})
    monkeypatch.setattr(AM3.Config, "__init__", _with_default(AM3.Config.__init__, text_dropout=0.1))
    assert code_identity(["am3"])["learner_defaults"]["am3"] == {"text_dropout": 0.1}


def _with_default(init, **changed):
    def wrapped(self, *args, **kwargs):
        init(self, *args, **{**changed, **kwargs})
    return wrapped


def test_classfusion_image_only_control_never_reads_class_text(world):
    """``class_text: false``: the fusion's image path alone, so text changes nothing, in training or at test."""
    control = build(world, "classfusion", fusion="mean", class_text=False)
    ep = episode(world)
    shuffled = type(ep)(**{**ep.__dict__, "class_text": ep.class_text.flip(0)})
    for mode in (True, False):
        control.train(mode)
        with torch.no_grad():
            image = class_means(control.embed(ep.support), ep.support_labels, ep.n_way)
            torch.testing.assert_close(control.adapt(ep), control.fusion({"image": image}))
            torch.testing.assert_close(control.adapt(shuffled), control.adapt(ep))
    with_text = build(world, "classfusion", fusion="mean").eval()
    with torch.no_grad():
        assert not torch.allclose(with_text.adapt(shuffled), with_text.adapt(ep))


def test_classfusion_control_option_leaves_run_ids_unchanged():
    from benchmark.runid import code_identity

    assert "class_text" not in code_identity(["classfusion"])["learner_defaults"]["classfusion"]


def test_training_a_loss_without_trainable_inputs_says_there_is_nothing_to_train(world, tmp_path):
    """FiLM's image-only path is the identity: on a frozen encoder its control has nothing to train."""
    data, _, loader, _ = world
    control = build(world, "classfusion", fusion="film", class_text=False)
    control.encoder.requires_grad_(False)
    cfg = TrainConfig(way=3, shot=2, query=3, episodes=2, val_every=0, checkpoint_every=0)
    with pytest.raises(BenchmarkError, match="nothing to train"):
        meta_train(control, Method("control_film", ("image",), None), cfg, lambda: loader,
                   EpisodeSampler(data, "train", 3, 2, 3), None, torch.device("cpu"), 0, tmp_path / "c.pt",
                   resume=False)


def test_frozen_conv4_l2_scale_normalises_features_and_keys_its_cache(world, tmp_path):
    path = tmp_path / "protonet.pt"
    torch.save(build(world, "protonet").state_dict(), path)
    raw = FrozenConv4(world[0].image_shape, checkpoint=str(path), hidden=8)
    scaled = FrozenConv4(world[0].image_shape, checkpoint=str(path), hidden=8, l2_scale=2.0)
    images = episode(world).query["image"]
    expected = 2.0 * torch.nn.functional.normalize(raw(images), dim=-1)
    torch.testing.assert_close(scaled(images), expected)
    features, raw_features = scaled.precompute(world[0]), raw.precompute(world[0])  # two cache entries
    torch.testing.assert_close(features.norm(dim=1), torch.full((len(features),), 2.0))
    torch.testing.assert_close(features, 2.0 * torch.nn.functional.normalize(raw_features, dim=-1))
    assert raw.preprocessing((0.5,), (0.2,)) != scaled.preprocessing((0.5,), (0.2,))
    for bad in (0, -1.0):
        with pytest.raises(BenchmarkError, match="l2_scale"):
            FrozenConv4(world[0].image_shape, checkpoint=str(path), hidden=8, l2_scale=bad)
