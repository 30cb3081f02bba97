"""MAML with Finn et al.'s learned head against the peer-style reference (learn2learn's algorithm,
written in benchmark/perf/peer.py), and the perf cases built on it."""
from __future__ import annotations

import json

import pytest
import torch

from benchmark.cli import main
from benchmark.perf.peer import FinnConv4, clone_module, peer_maml_backward
from benchmark.perf.peer_cases import case_maml_omniglot, case_maml_peer
from benchmark.perf.references import reference_maml_backward
from benchmark.perf.workloads import build, episodes, random_dataset
from tests.test_speed import as_double


@pytest.mark.parametrize("first_order", [False, True])
def test_learned_head_meta_gradients_equal_the_peer_style_reference(first_order):
    """float64: the suite's task-batched MAML, its per-task loop and the peer-style reference agree."""
    data = random_dataset((1, 28, 28), 30, 4)
    batch = as_double(episodes(data, "train", 5, 1, 2, 3, torch.device("cpu")))
    cpu = torch.device("cpu")
    learner = build("maml", (1, 28, 28), cpu, strided=True, head="learned", first_order=first_order).double().train()
    loop = build("maml", (1, 28, 28), cpu, strided=True, head="learned", first_order=first_order,
                 channels_last=False, task_batching=False).double().train()
    loop.load_state_dict(learner.state_dict())
    peer = FinnConv4().double()
    peer.load_from_learner(learner.state_dict())
    assert learner.can_batch_tasks(batch)
    learner.loss(batch).backward()
    reference_maml_backward(loop, batch, 1, 0.4, first_order)
    peer_maml_backward(peer, batch, 1, 0.4, first_order)
    for ours, textbook, theirs in zip(learner.parameters(), loop.parameters(), peer.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(textbook.grad, theirs.grad, rtol=1e-9, atol=1e-12)


def test_peer_clone_is_differentiable_and_leaves_the_model_alone():
    model = FinnConv4(hidden=4)
    clone = clone_module(model)
    assert all(a is not b and b.grad_fn is not None for a, b in zip(model.parameters(), clone.parameters()))
    clone(torch.randn(2, 1, 28, 28)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="strided Conv-4"):
        FinnConv4().load_from_learner(build("maml", (1, 28, 28), torch.device("cpu"), head="learned").state_dict())


def test_maml_peer_case_reports_every_entry():
    result = case_maml_peer(torch.device("cpu"), 1, meta_batch=2, with_learn2learn=False)
    assert [(e["queries"], e["order"]) for e in result["entries"]] == [(15, "second"), (15, "first"), (1, "second"),
                                                                      (1, "first")]
    for entry in result["entries"]:
        assert entry["head"] == "learned" and entry["tasks_per_s"] > 0 and entry["peer_tasks_per_s"] > 0
        assert entry["ratio"] > 0
        assert entry["max_abs_grad_diff"] <= 1e-3 * entry["max_abs_grad"]  # float32; a wrong gradient is O(1)
    assert result["max_abs_grad_diff"] == max(e["max_abs_grad_diff"] for e in result["entries"])


def test_real_omniglot_case_says_why_it_is_skipped(tmp_path):
    result = case_maml_omniglot(torch.device("cpu"), str(tmp_path))
    assert "no Omniglot" in result["skipped"] and str(tmp_path) in result["skipped"]


def test_perf_runs_the_real_data_case_only_with_long_or_by_name(tmp_path):
    out = tmp_path / "perf.json"
    args = ["perf", "--smoke", "--compile", "", "--threads", "1", "--data-root", str(tmp_path), "--out", str(out)]
    assert main([*args, "--cases", "maml_omniglot"]) == 0
    assert "no Omniglot" in json.loads(out.read_text())["cases"]["maml_omniglot"]["skipped"]


@pytest.mark.slow
def test_real_omniglot_case_projects_finns_protocol():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (root / "omniglot-py").is_dir():
        pytest.skip(f"no Omniglot under {root}")
    result = case_maml_omniglot(torch.device("cpu"), str(root), iterations=3, warmup=1)
    assert result["timed_iterations"] == 3 and result["dataset"] == "omniglot (vinyals_trainval split)"
    assert result["median_iteration_s"] > 0
    assert abs(result["projected_60000_iterations_h"] - 60_000 * result["median_iteration_s"] / 3600) < 0.01
