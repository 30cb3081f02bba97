"""The MAML cases of the speed benchmark (:mod:`benchmark.perf`): meta-training against the per-task
loop, and memory with many inner steps."""
from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmark.perf.measure import compare, speedup
from benchmark.perf.references import reference_maml_backward
from benchmark.perf.workloads import build, episodes, random_dataset
from learners.maml import MAML


def case_maml(device: torch.device, repeats: int, first_order: bool, meta_batch: int = 32) -> dict:
    """MAML meta-gradients: this suite's learner against the plain per-task loop.

    ``fast`` is :class:`~learners.maml.MAML` as the harness runs it (inner steps of all tasks
    batched as grouped convolutions, NCHW, and the zero head's first step moving only the head;
    ``fast_full_first_step`` without that skip; ``fast_channels_last_query`` with the opt-in
    channels-last query side). ``reference`` is
    :func:`~benchmark.perf.references.reference_maml_backward` on the textbook model (NCHW, as PyTorch builds it and
    learn2learn runs it); ``reference_channels_last`` is the same loop on the channels-last
    model, which shows how much of the gain the memory layout alone gives.

    Long: one measurement read top to bottom (build the variants, time them in interleaved rounds,
    compare their gradients); splitting it would separate the timings from what they compare.
    """
    data = random_dataset((1, 28, 28), 200, 20)
    batch = episodes(data, "train", 5, 1, 15, meta_batch, device)
    options = {"first_order": first_order, "train_steps": 1}
    learner = build("maml", (1, 28, 28), device, strided=True, **options).train()
    plain = build("maml", (1, 28, 28), device, strided=True, channels_last=False, task_batching=False,
                  **options).train()
    channels_last_query = build("maml", (1, 28, 28), device, strided=True, query_channels_last=True,
                                **options).train()
    # the batched path computing the first inner step's exactly-zero encoder gradients too, to
    # show how much of the gain skipping them gives (MAML.stepped_names)
    full_first_step = build("maml", (1, 28, 28), device, strided=True, **options).train()
    full_first_step.stepped_names = lambda params, step: [n for n in params if full_first_step.is_inner(n)]
    for model in (plain, channels_last_query, full_first_step):
        model.load_state_dict(learner.state_dict())
    cfg = learner.config

    def batched(model: MAML) -> Callable[[], list[torch.Tensor]]:
        def run() -> list[torch.Tensor]:
            model.zero_grad(set_to_none=True)
            model.loss(batch).backward()
            return [p.grad for p in model.parameters()]
        return run

    fast = batched(learner)

    def reference(model: MAML) -> Callable[[], list[torch.Tensor]]:
        def run() -> list[torch.Tensor]:
            model.zero_grad(set_to_none=True)
            reference_maml_backward(model, batch, cfg.train_steps, cfg.train_step_size, first_order)
            return [p.grad for p in model.parameters()]
        return run

    a = [g.clone() for g in fast()]
    b = [g.clone() for g in reference(plain)()]
    scale = max(float(g.abs().max()) for g in b)
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    diff_channels_last_query = max(float((x - y).abs().max()) for x, y in zip(batched(channels_last_query)(), b))
    # float32 noise floor: the same reference loop with the tasks in reverse order
    plain.zero_grad(set_to_none=True)
    reference_maml_backward(plain, batch[::-1], cfg.train_steps, cfg.train_step_size, first_order)
    noise = max(float((x - p.grad).abs().max()) for x, p in zip(b, plain.parameters()))
    # how far apart two textbook implementations are: the same loop on the channels-last model
    layout = max(float((x - y).abs().max()) for x, y in zip(b, reference(learner)()))
    # the query side alone (forward and backward to the adapted weights), which no batching of the
    # inner loops removes: the loop's, and the batched path's
    adapted = [{n: p.detach().requires_grad_() for n, p in plain.inner_loop(
        plain.initial_params(e.n_way), e.support, e.support_labels, cfg.train_steps, cfg.train_step_size,
        create_graph=False).items()} for e in batch]
    adapted_batched = {n: p.detach().requires_grad_() for n, p in learner.task_batched_adapt(
        batch, create_graph=False).items()}
    query = torch.stack([e.query["image"] for e in batch])
    query_labels = torch.stack([e.query_labels for e in batch])

    def reference_query_side() -> None:
        for params, episode in zip(adapted, batch):
            loss = F.cross_entropy(plain.logits(params, episode.query), episode.query_labels) / meta_batch
            torch.autograd.grad(loss, list(params.values()))

    def fast_query_side() -> None:  # as MAML.loss runs it (chunked: the backward happens inside)
        loss = learner.query_loss(adapted_batched, query, query_labels)
        torch.autograd.grad(loss, list(adapted_batched.values()))

    result = compare({"fast": fast, "reference": reference(plain), "reference_channels_last": reference(learner),
                      "fast_channels_last_query": batched(channels_last_query),
                      "fast_full_first_step": batched(full_first_step),
                      "reference_query_side": reference_query_side, "fast_query_side": fast_query_side},
                     repeats, device)
    tasks_per_s = {k: round(meta_batch / v["seconds"], 2) for k, v in result.items()}
    query_share = statistics.median(q / r for q, r in zip(result["reference_query_side"]["times"],
                                                          result["reference"]["times"]))
    return {"episode": "5w1s15q", "meta_batch": meta_batch, "inner_steps": 1, "backbone": "conv4-64-strided",
            "tasks_per_s": tasks_per_s["fast"], "reference_tasks_per_s": tasks_per_s["reference"],
            "ratio": speedup(result, "reference", "fast"),
            "reference_channels_last_tasks_per_s": tasks_per_s["reference_channels_last"],
            "ratio_to_channels_last_reference": speedup(result, "reference_channels_last", "fast"),
            # any implementation whose query side costs what the loop's does is at most this much
            # faster than the loop, however cheap its inner loops are
            "reference_query_side_share": round(query_share, 3),
            "ceiling_ratio": speedup(result, "reference", "reference_query_side"),
            "query_side_ratio": speedup(result, "reference_query_side", "fast_query_side"),
            "max_abs_grad_diff": diff, "max_abs_grad": scale, "reference_reordered_max_abs_grad_diff": noise,
            "reference_channels_last_max_abs_grad_diff": layout,
            # the batched path without skipping the zero head's exactly-zero first-step gradients
            "full_first_step_tasks_per_s": tasks_per_s["fast_full_first_step"],
            "full_first_step_ratio": speedup(result, "reference", "fast_full_first_step"),
            # the opt-in channels-last query side (MAML query_channels_last=True)
            "query_channels_last_tasks_per_s": tasks_per_s["fast_channels_last_query"],
            "query_channels_last_ratio": speedup(result, "reference", "fast_channels_last_query"),
            "query_channels_last_max_abs_grad_diff": diff_channels_last_query,
            "peak_memory_mb": result["fast"]["peak_memory_mb"],
            "reference_peak_memory_mb": result["reference"]["peak_memory_mb"],
            "peak_growth_mb": result["fast"]["peak_growth_mb"],
            "reference_peak_growth_mb": result["reference"]["peak_growth_mb"]}


def case_maml_memory(device: torch.device, meta_batch: int = 8, steps: int = 5) -> dict:
    """Second-order MAML with many inner steps: peak memory and tasks/s of the batched path (its
    query side in chunks of about 160 query images, the default, and all at once), the per-task loop with
    gradient checkpointing, and first order (5w1s15q, strided Conv-4-64)."""
    data = random_dataset((1, 28, 28), 200, 20)
    batch = episodes(data, "train", 5, 1, 15, meta_batch, device)
    variants = {"second_order": {}, "second_order_query_at_once": {"query_chunk_images": 0},
                "second_order_checkpointed": {"checkpoint": True}, "first_order": {"first_order": True}}
    out: dict = {"episode": "5w1s15q", "meta_batch": meta_batch, "inner_steps": steps}
    for name, options in variants.items():
        learner = build("maml", (1, 28, 28), device, strided=True, train_steps=steps, **options).train()

        def step(learner: MAML = learner) -> None:
            learner.zero_grad(set_to_none=True)
            learner.loss(batch).backward()

        result = compare({name: step}, 1, device)[name]
        out[name] = {"tasks_per_s": round(meta_batch / result["seconds"], 2), "peak_memory_mb": result["peak_memory_mb"],
                     "peak_growth_mb": result["peak_growth_mb"]}
    return out
