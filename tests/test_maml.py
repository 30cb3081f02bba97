"""MAML, first-order MAML and ANIL: meta-gradients against references, batching, API behaviour."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from benchmark.cli import main
from benchmark.perf.references import reference_maml_backward
from learners import LEARNERS
from learners.maml import MAML
from tasks.episode import Episode
from tasks.errors import BenchmarkError
from tests.conftest import make, tasks

def grads(learner: MAML, batch) -> list[torch.Tensor]:
    learner.zero_grad(set_to_none=True)
    learner.loss(batch).backward()
    return [p.grad.clone() for p in learner.parameters()]


@pytest.mark.parametrize("head,steps", [("zero", 1), ("zero", 2), ("learned", 1), ("learned", 2)])
def test_second_order_meta_gradient_matches_finite_differences(head, steps):
    learner = make(head=head, n_way=3, train_steps=steps, train_step_size=0.3).train()
    batch = tasks(2)
    analytic = grads(learner, batch)
    params = list(learner.parameters())
    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for _ in range(3):  # random directions
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(eps * d)
        plus = learner.loss(batch).item()
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(2 * eps * d)
        minus = learner.loss(batch).item()
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(eps * d)
        numeric = (plus - minus) / (2 * eps)
        expected = sum(float((a * d).sum()) for a, d in zip(analytic, direction))
        assert numeric == pytest.approx(expected, rel=1e-5, abs=1e-8)


def test_first_order_gradient_is_query_gradient_at_adapted_params():
    learner = make("fomaml", train_steps=2, train_step_size=0.3).train()
    assert learner.config.first_order
    batch = tasks(3)
    got = dict(zip([n for n, _ in learner.named_parameters()], grads(learner, batch)))
    expected = {n: torch.zeros_like(p) for n, p in learner.named_parameters()}
    for episode in batch:
        adapted = learner.adapt(episode)  # detached adapted parameters
        adapted = {n: p.clone().requires_grad_() for n, p in adapted.items()}
        loss = F.cross_entropy(learner.logits(adapted, episode.query), episode.query_labels)
        for name, g in zip(adapted, torch.autograd.grad(loss, list(adapted.values()))):
            if name in expected:
                expected[name] += g / len(batch)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name,first_order", [("maml", False), ("maml", True), ("anil", False), ("anil", True)])
def test_meta_gradient_equals_plain_reference_loop(name, first_order):
    learner = make(name, first_order=first_order, head="learned", n_way=3, dtype=torch.float32, hidden=8,
                   shape=(1, 16, 16)).train()
    batch = tasks(4, shape=(1, 16, 16), dtype=torch.float32)
    fast = grads(learner, batch)
    learner.zero_grad(set_to_none=True)
    reference_maml_backward(learner, batch, 1, learner.config.train_step_size, first_order)
    for a, p in zip(fast, learner.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = tasks(2)
    plain = grads(make(train_steps=3).train(), batch)
    checkpointed = grads(make(train_steps=3, checkpoint=True).train(), batch)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_anil_adapts_only_the_head():
    learner = make("anil", head="learned", n_way=3).eval()
    episode = tasks(1)[0]
    start = learner.initial_params(3)
    with torch.no_grad():
        adapted = learner.adapt(episode)
    for name, value in adapted.items():
        if name.startswith("head."):
            assert not torch.equal(value, start[name]), name
        else:
            assert torch.equal(value, start[name]), name
    maml_state = make("maml", head="learned", n_way=3).eval().adapt(episode)
    assert any(not torch.equal(v, start[n]) for n, v in maml_state.items() if n.startswith("encoder."))


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil"])
def test_api_predict_before_adapt_and_determinism(name):
    episode = tasks(1)[0]
    learner = make(name).eval()
    with pytest.raises(RuntimeError, match="before adapt"):
        learner.predict(None, episode.query)
    with torch.no_grad():  # the harness calls under no_grad; adapt turns gradients on locally
        logits = learner.predict(learner.adapt(episode), episode.query)
        again = make(name).eval().predict(make(name).eval().adapt(episode), episode.query)
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, again, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil"])
def test_default_head_is_finns_meta_learned_linear_layer(name):
    """Finn et al.'s MAML by default: a meta-learned ``nn.Linear`` head whose rows are tied to labels, and
    the first inner step adapts the encoder too (with Kao et al.'s zero head it moves only the head)."""
    cls = LEARNERS.get(name)
    assert cls.Config().head == "learned"
    learner = make(name).eval()
    assert isinstance(learner.head, torch.nn.Linear) and learner.head.out_features == 3
    assert "head.weight" in dict(learner.named_parameters()) and not learner.permutation_equivariant
    episode = tasks(1)[0]
    for head, encoder_moves in (("learned", name != "anil"), ("zero", False)):
        learner = make(name, head=head, test_steps=1).eval()
        start = learner.initial_params(3)
        with torch.no_grad():
            adapted = learner.adapt(episode)
        moved = [n for n, v in adapted.items() if n.startswith("encoder.") and not torch.equal(v, start[n])]
        assert bool(moved) == encoder_moves, (head, moved)
        assert not torch.equal(adapted["head.weight"], start["head.weight"])
    assert make(name, head="zero").permutation_equivariant


def test_permuting_support_labels_permutes_predictions():
    """With Kao et al.'s zero head MAML is label-permutation equivariant (the learned head is not)."""
    learner = make(head="zero").eval()
    episode = tasks(1)[0]
    perm = torch.tensor([2, 0, 1])
    permuted = Episode(support=episode.support, support_labels=perm[episode.support_labels], query=episode.query,
                       query_labels=perm[episode.query_labels], class_ids=episode.class_ids)
    with torch.no_grad():
        a = learner.predict(learner.adapt(episode), episode.query)
        b = learner.predict(learner.adapt(permuted), episode.query)
    torch.testing.assert_close(b[:, perm], a)


def test_options_batch_norm_modes_and_head_errors():
    assert make().transductive and not make(batch_norm="running").transductive
    running = make(batch_norm="running").train()
    batch = tasks(2)
    running.loss(batch).backward()  # updates running statistics
    assert running.encoder.encoders["image"].blocks[0][1].num_batches_tracked > 0
    with pytest.raises(ValueError, match="batch_norm"):
        MAML.Config(batch_norm="bogus")
    with pytest.raises(BenchmarkError, match="n_way"):
        make(head="learned", n_way=5).loss(batch)


def test_cli_runs_maml_family(tmp_path):
    out = tmp_path / "runs"
    code = main(["--learners", "maml,fomaml,anil", "--modalities", "image", "--train-episodes", "3",
                 "--test-episodes", "5", "--shots", "1", "--out", str(out), "--threads", "1",
                 "--set", "train.way=5", "--set", "train.val_episodes=2", "--set", "train.meta_batch=2",
                 "--set", "eval.support_modalities=image", "--set", "eval.query_modalities=image",
                 "--set", "dataset_options={n_classes: 40, items_per_class: 20}",
                 "--set", "learner_options={maml: {test_steps: 1}}"])
    assert code == 0
    run = json.loads(next(out.glob("*/run.json")).read_text())
    assert run["status"] == "finished" and {"maml-image-none", "fomaml-image-none", "anil-image-none"} <= set(run["methods"])



CBFINN = {"batch_norm_scale": False, "adapt_batch_norm": False, "inner_loss": "sum_per_shot"}


def test_cbfinn_batch_norm_has_no_scale_and_stays_out_of_the_inner_loop():
    """cbfinn/maml's batch norm: TensorFlow's default (a shift, no scale), meta-learned in the outer loop only."""
    plain, ref = make(head="learned"), make(head="learned", **CBFINN)
    norm_names = lambda m: {n for n in dict(m.named_parameters()) if ".blocks." in n and n.split(".")[-2] == "1"}  # noqa: E731
    assert {n.rsplit(".", 1)[1] for n in norm_names(plain)} == {"weight", "bias"}
    assert {n.rsplit(".", 1)[1] for n in norm_names(ref)} == {"bias"}
    assert ref.outer_only == norm_names(ref) and not plain.outer_only
    episode = tasks(1)[0]
    ref.eval()
    start = ref.initial_params(3)
    with torch.no_grad():
        adapted = ref.adapt(episode)
    for name in start:
        moved = not torch.equal(adapted[name], start[name])
        assert moved == (name not in ref.outer_only), name
    ref.train()
    ref.loss(tasks(2)).backward()  # the outer loop still learns the shift
    assert all(dict(ref.named_parameters())[n].grad.abs().sum() > 0 for n in ref.outer_only)


def test_cbfinn_inner_loss_is_the_sum_over_the_support_divided_by_shots():
    """One inner step with ``sum_per_shot`` equals one step of the mean loss with the step size times n_way."""
    episode = tasks(1)[0]  # 3-way 2-shot
    summed = make(head="learned", inner_loss="sum_per_shot", test_steps=1, test_step_size=0.1).eval()
    mean = make(head="learned", test_steps=1, test_step_size=0.3).eval()
    with torch.no_grad():
        a, b = summed.adapt(episode), mean.adapt(episode)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="inner_loss"):
        MAML.Config(inner_loss="sum")


@pytest.mark.parametrize("first_order", [False, True])
def test_cbfinn_options_batched_meta_gradient_equals_the_loop_and_finite_differences(first_order):
    batch = tasks(4)
    batched = make(head="learned", train_steps=2, first_order=first_order, **CBFINN).train()
    looped = make(head="learned", train_steps=2, first_order=first_order, task_batching=False, **CBFINN).train()
    assert batched.can_batch_tasks(batch)
    fast, slow = grads(batched, batch), grads(looped, batch)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if first_order:
        return
    params = list(looped.parameters())
    direction = [torch.randn(p.shape, generator=torch.Generator().manual_seed(3), dtype=p.dtype) for p in params]
    eps = 1e-6
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        values.append(looped.loss(batch).item())
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
    expected = sum(float((g * d).sum()) for g, d in zip(slow, direction))
    assert (values[0] - values[1]) / (2 * eps) == pytest.approx(expected, rel=1e-5, abs=1e-8)


def _with_queries(episode: Episode, counts: list[int]) -> Episode:
    """``episode`` keeping the first ``counts[c]`` query items of each class ``c`` (0: none)."""
    per_class = len(episode.query_labels) // episode.n_way
    keep = torch.cat([torch.arange(c * per_class, c * per_class + n) for c, n in enumerate(counts)])
    return Episode(episode.support, episode.support_labels, {k: v[keep] for k, v in episode.query.items()},
                   episode.query_labels[keep], episode.class_ids)


@pytest.mark.parametrize("name", ["maml", "anil"])
def test_episodes_with_unequal_query_counts_per_class_predict_as_one_at_a_time(name):
    """Single-query trials and classes without queries: episodes with as many queries in all (however
    spread over classes) are adapted together, others fall back to one at a time; the same logits."""
    base = tasks(4, shape=(1, 28, 28), query=3)  # 28x28: the last batch norm sees 2x2 values of one query
    trials = [_with_queries(e, [int(c == k % 3) for c in range(3)]) for k, e in enumerate(base)]  # one query
    mixed = [_with_queries(base[0], [3, 0, 1]), _with_queries(base[1], [0, 2, 2]), _with_queries(base[2], [1, 0, 0])]
    learner = make(name, shape=(1, 28, 28), test_steps=2).eval()
    assert learner.can_batch_tasks(trials) and learner.can_batch_tasks(mixed[:2]) and not learner.can_batch_tasks(mixed)
    for batch in (trials, mixed):
        with torch.no_grad():
            together = learner.predict_episodes(batch)
            alone = [learner.predict_episodes([e])[0] for e in batch]
        for a, b, e in zip(together, alone, batch):
            assert a.shape == (len(e.query_labels), 3)
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
