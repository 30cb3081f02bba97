"""Registry-driven tests: every registered learner x fusion x modality setting it supports.

The cases are discovered from ``LEARNERS.names()`` and ``FUSIONS.names()``, so a
newly registered learner or fusion is covered without editing this file. Any
integer ``Config`` field whose name ends in ``steps`` is cut to at most 3 to keep
gradient-based learners fast.
"""
from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

import learners  # noqa: F401  (registers the built-ins)
from learners import FUSIONS, LEARNERS, ModelSpec
from learners.text import BagOfWords
from tasks.episode import Episode, EpisodeLoader, TaskSetting, parse_modalities
from tasks.errors import BenchmarkError, UnsupportedSetting
from tasks.sampler import EpisodeSampler

N_WAY, N_SHOT, N_QUERY = 3, 2, 3
SETTINGS = ("image", "text", "image+text")


def _settings(cls) -> list[tuple[tuple[str, ...], str | None]]:
    out = []
    for text in cls.supports_modalities:
        modalities = parse_modalities(text)
        out += [(modalities, f) for f in FUSIONS.names()] if len(modalities) > 1 else [(modalities, None)]
    return out


CASES = [(name, m, f) for name in LEARNERS.names() for m, f in _settings(LEARNERS.get(name))]
IDS = [f"{name}-{'+'.join(m)}-{f or 'none'}" for name, m, f in CASES]


class World:
    """A tiny dataset with prepared text, one test episode and one meta-train episode."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        train = dataset.split_classes("train")
        self.train_ids = tuple(int(c) for c in train)
        self.corpus = [t for t, y in zip(dataset.captions, dataset.labels) if y in set(self.train_ids)]
        text = BagOfWords(self.corpus, dim=16)
        loader = EpisodeLoader(dataset.images, dataset.mean, dataset.std, text.prepare(dataset.captions),
                               text.prepare(dataset.class_texts), TaskSetting())
        rng = np.random.default_rng(0)
        self.episode = loader.load(EpisodeSampler(dataset, "test", N_WAY, N_SHOT, N_QUERY).sample(rng))
        self.train_episode = loader.load(EpisodeSampler(dataset, "train", N_WAY, N_SHOT, N_QUERY).sample(rng))

    def build(self, name: str, modalities: tuple[str, ...], fusion: str | None, seed: int = 0,
              setting: TaskSetting | None = None, **options):
        cls = LEARNERS.get(name)
        torch.manual_seed(seed)
        text = BagOfWords(self.corpus, dim=16) if ("text" in modalities or cls.requires_class_text) else None
        spec = ModelSpec(
            modalities=modalities, setting=setting or TaskSetting(), image_shape=self.dataset.image_shape,
            backbone="conv4", backbone_options={"hidden": 8}, text_encoder=text, fusion=fusion,
            fusion_options=small_fusion_options(fusion), n_train_classes=len(self.train_ids),
            train_class_ids=self.train_ids,
        )
        return cls(spec, tiny_config(cls, **options)).eval()


def small_fusion_options(fusion: str | None) -> dict:
    if fusion is None:
        return {}
    params = inspect.signature(FUSIONS.get(fusion).__init__).parameters
    return {k: v for k, v in {"dim": 16, "hidden": 16, "rank": 2}.items() if k in params}


def tiny_config(cls, **options):
    if "n_way" in {f.name for f in dataclasses.fields(cls.Config)}:  # MAML's learned head: one output per way
        options.setdefault("n_way", N_WAY)
    config = cls.Config(**options)
    steps = {f.name: min(getattr(config, f.name), 3) for f in dataclasses.fields(config)
             if f.name.endswith("steps") and type(getattr(config, f.name)) is int and f.name not in options}
    return dataclasses.replace(config, **steps)


@pytest.fixture(scope="module")
def world(tiny_dataset) -> World:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend (3x faster on a shared 2-core machine)
    yield World(tiny_dataset)
    torch.set_num_threads(threads)


def run(learner, episode: Episode) -> torch.Tensor:
    with torch.no_grad():  # as the harness evaluates
        return learner.predict(learner.adapt(episode), episode.query)


def relabel(episode: Episode, perm: torch.Tensor) -> Episode:
    """The same episode with class ``l`` renamed ``perm[l]`` (items stay in place)."""
    inverse = torch.argsort(perm)
    return Episode(
        support=episode.support, support_labels=perm[episode.support_labels], query=episode.query,
        query_labels=perm[episode.query_labels], class_ids=episode.class_ids[inverse],
        class_text=None if episode.class_text is None else episode.class_text[inverse],
        episode_id=episode.episode_id,
    )


@pytest.mark.parametrize("name,modalities,fusion", CASES, ids=IDS)
def test_tiny_episode(world, name, modalities, fusion):
    learner = world.build(name, modalities, fusion)
    logits = run(learner, world.episode)
    assert logits.shape == (N_WAY * N_QUERY, N_WAY)
    assert torch.isfinite(logits).all()
    again = run(world.build(name, modalities, fusion), world.episode)
    assert torch.equal(logits, again), "the same seed must give the same output"
    with pytest.raises(RuntimeError, match="before adapt"):
        learner.predict(None, world.episode.query)


@pytest.mark.parametrize("name,modalities,fusion", CASES, ids=IDS)
def test_permuting_support_labels_permutes_predictions(world, name, modalities, fusion):
    learner = world.build(name, modalities, fusion)
    if not learner.permutation_equivariant:
        pytest.skip(f"{name} declares permutation_equivariant = False")
    perm = torch.tensor([2, 0, 1])
    logits = run(learner, world.episode)
    permuted = run(learner, relabel(world.episode, perm))
    torch.testing.assert_close(permuted[:, perm], logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(permuted.argmax(-1), perm[logits.argmax(-1)])


@pytest.mark.parametrize("name,modalities,fusion", CASES, ids=IDS)
def test_meta_training_loss(world, name, modalities, fusion):
    learner = world.build(name, modalities, fusion).train()
    loss = learner.loss([world.train_episode, world.train_episode])
    assert loss.ndim == 0 and torch.isfinite(loss)
    params = [p for p in learner.parameters() if p.requires_grad]
    loss.backward()
    grads = [p.grad for p in params if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", LEARNERS.names())
def test_unsupported_settings_are_refused(world, name):
    """Every learner refuses, naming why: a modality setting it does not support, image-only queries
    for a text-only model, and a fusion that needs every modality on image-only queries; the same
    image-only queries are fine for an image model."""
    cls = LEARNERS.get(name)
    image_queries = TaskSetting(("image", "text"), ("image",))
    cases = [(parse_modalities(t), "concat" if "+" in t else None, TaskSetting(), "does not run on")
             for t in SETTINGS if t not in cls.supports_modalities]
    if "text" in cls.supports_modalities:
        cases.append((("text",), None, image_queries, "the query side shows image but this model uses only text"))
    if "image+text" in cls.supports_modalities:
        cases.append((("image", "text"), "concat", image_queries,
                      "the query side shows only image but fusion 'concat' cannot fuse"))
    assert cases, f"{name}: nothing to refuse"
    for modalities, fusion, setting, message in cases:
        with pytest.raises(UnsupportedSetting, match=message):
            world.build(name, modalities, fusion, setting=setting)
    assert world.build(name, ("image",), None, setting=image_queries) is not None


# -- learner-specific behaviour ---------------------------------------------------------------

@pytest.mark.parametrize("modalities,fusion", [(("image",), None), (("image", "text"), "attention"),
                                               (("image", "text"), "late")])
def test_am3_with_gate_forced_to_one_is_protonet(world, modalities, fusion):
    am3 = world.build("am3", modalities, fusion, force_gate=1.0)
    proto = world.build("protonet", modalities, fusion, seed=1)
    proto.encoder.load_state_dict(am3.encoder.state_dict())
    assert torch.equal(run(am3, world.episode), run(proto, world.episode))
    learned = world.build("am3", modalities, fusion)
    learned.encoder.load_state_dict(am3.encoder.state_dict())
    assert not torch.equal(run(learned, world.episode), run(proto, world.episode))


def test_am3_gate_bias_sets_the_initial_gate(world):
    am3 = world.build("am3", ("image",), None, gate_bias=50.0)
    _, gate = am3.mixing(world.episode.class_text)
    assert torch.allclose(gate, torch.ones_like(gate))


def test_am3_refuses_text_only_and_needs_class_text(world):
    with pytest.raises(UnsupportedSetting, match="does not run on 'text'"):
        world.build("am3", ("text",), None)
    am3 = world.build("am3", ("image",), None)
    episode = dataclasses.replace(world.episode, class_text=None)
    with pytest.raises(BenchmarkError, match="class-level text"):
        am3.adapt(episode)


@pytest.mark.parametrize("name", ["baselinepp", "linear_probe"])
def test_finetuning_learners_leave_the_encoder_alone(world, name):
    learner = world.build(name, ("image", "text"), "late", finetune_steps=20)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    with torch.no_grad():
        state = learner.adapt(world.episode)
        support_predictions = learner.predict(state, world.episode.support).argmax(-1)
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert all(p.grad is None for p in learner.parameters())
    # the head was fitted to the support set
    assert (support_predictions == world.episode.support_labels).float().mean() >= 0.5


def test_baselinepp_pretrains_on_global_train_labels(world):
    learner = world.build("baselinepp", ("image",), None).train()
    assert learner.classifier.out_features == len(world.train_ids)
    labels = learner.global_labels(world.train_episode, world.train_episode.support_labels)
    expected = [world.train_ids.index(int(c)) for c in world.train_episode.class_ids[world.train_episode.support_labels]]
    assert labels.tolist() == expected
    with pytest.raises(BenchmarkError, match="outside the meta-train split"):
        learner.loss([world.episode])


def test_matchingnet_probabilities_sum_to_one(world):
    logits = run(world.build("matchingnet", ("image",), None), world.episode)
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(len(logits)))
