"""Speed benchmark: throughput, peak memory and ratios against reference implementations.

Run ``python -m benchmark.perf`` (or ``python run_benchmark.py perf``). It prints one JSON
object and writes it to ``--out``. Every ratio compares two implementations measured in the
same run, interleaved (A, B, A, B, ...), and each throughput is the median over repeats, so
that load from other processes hits both sides alike. Data is random uint8 images of the
benchmark's shapes, so no dataset is needed.

Cases (the references are in :mod:`benchmark.references`, the timing in :mod:`benchmark.measure`):
  * ``sampling``: episode sampling + batching (episodes/s) for 28x28x1 and 84x84x3 images, as
    a fraction of a ProtoNet training step on the same episodes;
  * ``protonet_train``: ProtoNet meta-training, Omniglot-sized 60-way 5-shot 5-query, this suite's
    Conv-4-64 (eager and compiled) against the textbook Conv-4;
  * ``maml_second_order`` / ``maml_first_order``: 5-way 1-shot 15-query, meta-batch 32, one
    inner step, strided Conv-4-64 (tasks/s) against the plain per-task loop, with the largest
    gradient difference and two float32 yardsticks for it (the reference with its tasks reordered,
    and the reference on the channels-last model), and the query side alone (forward and backward
    at the adapted weights, which batching the inner loops cannot remove) with the ceiling it sets;
  * ``maml_memory``: 5 inner steps, meta-batch 8: batched (query side in chunks of 4 tasks and
    all at once), gradient-checkpointed, first order;
  * ``eval``: 600 test episodes of 5-way 1-shot 15-query; ProtoNet with cached embeddings vs
    embedding every episode, MAML adapting 32 episodes together vs one at a time;
  * ``flops``: achieved floating-point rate of the Conv-4 ProtoNet training step against a large
    matrix multiplication measured in the same run.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.measure import compare, peak_mb, reset_peak, speedup, timed
from benchmark.references import reference_maml_backward, textbook_conv4
from benchmark.runtime import check_compile_backend, keep_freed_memory
from learners import LEARNERS, ModelSpec
from learners.base import Learner
from learners.maml import MAML
from tasks.datasets.base import FewShotDataset
from tasks.episode import Episode, EpisodeLoader, TaskSetting
from tasks.sampler import EpisodeManifest, EpisodeSampler

log = logging.getLogger(__name__)

IMAGE = TaskSetting(("image",), ("image",))


# -- data ---------------------------------------------------------------------------------------
def random_dataset(shape: tuple[int, int, int], n_classes: int, per_class: int, seed: int = 0) -> FewShotDataset:
    """Random uint8 images of ``shape``; all classes in every split (speed only)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_classes * per_class, *shape), dtype=np.uint8)
    labels = np.repeat(np.arange(n_classes), per_class)
    third = n_classes // 3
    splits = {"train": np.arange(n_classes - 2 * third), "val": np.arange(n_classes - 2 * third, n_classes - third),
              "test": np.arange(n_classes - third, n_classes)}
    c = shape[0]
    return FewShotDataset(f"random{shape[1]}", images, labels, [f"c{i}" for i in range(n_classes)], splits,
                          mean=(0.5,) * c, std=(0.25,) * c)


def build(name: str, shape: tuple[int, int, int], device: torch.device, strided: bool = False,
          channels_last: bool = True, **options) -> Learner:
    torch.manual_seed(0)
    spec = ModelSpec(("image",), IMAGE, shape,
                     backbone_options={"hidden": 64, "strided": strided, "channels_last": channels_last})
    cls = LEARNERS.get(name)
    return cls(spec, cls.Config(**options)).to(device)


def episodes(dataset: FewShotDataset, split: str, way: int, shot: int, query: int, n: int,
             device: torch.device, seed: int = 0) -> list[Episode]:
    sampler = EpisodeSampler(dataset, split, way, shot, query)
    loader = EpisodeLoader(dataset.images, dataset.mean, dataset.std, setting=IMAGE)
    rng = np.random.default_rng(seed)
    return [loader.load(sampler.sample(rng, i)).to(device) for i in range(n)]


def train_step(learner: Learner, optimiser: torch.optim.Optimizer, batch: Sequence[Episode]) -> float:
    learner.train()
    loss = learner.loss(batch)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss.item()


# -- cases --------------------------------------------------------------------------------------
def case_sampling(device: torch.device, repeats: int, omniglot_way: int = 60) -> dict:
    out = {}
    for label, shape, per_class, way, shot, query, classes in (("omniglot_28x28x1", (1, 28, 28), 20, omniglot_way, 5, 5, 200),
                                                      ("miniimagenet_84x84x3", (3, 84, 84), 25, 5, 5, 15, 60)):
        data = random_dataset(shape, classes, per_class)
        sampler = EpisodeSampler(data, "train", way, shot, query)
        loader = EpisodeLoader(data.images, data.mean, data.std, setting=IMAGE)
        rng = np.random.default_rng(0)
        n = 20
        learner = build("protonet", shape, device)
        optimiser = torch.optim.Adam(learner.parameters(), lr=1e-3)
        batch = [loader.load(sampler.sample(rng)).to(device)]
        result = compare({
            "sampling": lambda: [loader.load(sampler.sample(rng)).to(device) for _ in range(n)],
            "train_step": lambda: train_step(learner, optimiser, batch),
        }, repeats, device)
        per_episode = result["sampling"]["seconds"] / n
        out[label] = {
            "episode": f"{way}w{shot}s{query}q", "episodes_per_s": round(1 / per_episode, 1),
            "protonet_train_step_s": round(result["train_step"]["seconds"], 4),
            "fraction_of_train_step": round(per_episode / result["train_step"]["seconds"], 4),
            "peak_memory_mb": result["sampling"]["peak_memory_mb"],
        }
    return out


@functools.lru_cache(maxsize=None)
def protonet_variants(device: torch.device, compile_backend: str) -> dict[str, tuple[Learner, torch.optim.Optimizer]]:
    """ProtoNet on Omniglot-sized images, three ways: ``reference`` (textbook Conv-4), ``eager``
    (this suite's Conv-4: channels-last, pooling before ReLU) and ``compiled`` (``eager`` through
    ``torch.compile``, if a backend is given). Same initial weights; built once per run."""
    out = {}
    for name in ("reference", "eager", "compiled"):
        if name == "compiled" and not compile_backend:
            continue
        learner = build("protonet", (1, 28, 28), device)
        if name == "reference":
            blocks = learner.encoder.encoders["image"].blocks
            plain = textbook_conv4((1, 28, 28)).to(device)
            for i in range(4):  # same weights, textbook order
                plain[4 * i].load_state_dict(blocks[i][0].state_dict())
                plain[4 * i + 1].load_state_dict(blocks[i][1].state_dict())
            plain.out_dim = learner.encoder.encoders["image"].out_dim  # what the encoder reads
            learner.encoder.encoders["image"] = plain
        if name == "compiled":
            learner.compile_backbone(compile_backend)
        out[name] = (learner, torch.optim.Adam(learner.parameters(), lr=1e-3))
    return out


def case_protonet_train(device: torch.device, repeats: int, compile_backend: str, way: int = 60) -> dict:
    """ProtoNet meta-training steps, Omniglot 60-way 5-shot 5-query, Conv-4-64 (episodes/s)."""
    data = random_dataset((1, 28, 28), 200, 20)
    batch_pool = episodes(data, "train", way, 5, 5, 4, device)
    variants = protonet_variants(device, compile_backend)
    compile_s = None
    if "compiled" in variants:  # the first calls compile (train mode, both batch shapes)
        start = time.perf_counter()
        for i in range(2):
            train_step(*variants["compiled"], [batch_pool[i]])
        compile_s = round(time.perf_counter() - start, 1)
    it = iter(range(10**9))
    result = compare({name: (lambda v=v: train_step(*v, [batch_pool[next(it) % 4]])) for name, v in variants.items()},
                     repeats, device)
    eps = {k: round(1 / v["seconds"], 2) for k, v in result.items()}
    out = {"episode": f"{way}w5s5q", "backbone": "conv4-64", "episodes_per_s": eps["eager"],
           "reference_episodes_per_s": eps["reference"], "ratio": speedup(result, "reference", "eager"),
           "peak_memory_mb": result["eager"]["peak_memory_mb"],
           "reference_peak_memory_mb": result["reference"]["peak_memory_mb"]}
    if "compiled" in variants:
        out.update({"compiled_backend": compile_backend, "compiled_episodes_per_s": eps["compiled"],
                    "compiled_ratio": speedup(result, "reference", "compiled"), "compile_s": compile_s,
                    "compiled_peak_memory_mb": result["compiled"]["peak_memory_mb"]})
    return out


def case_maml(device: torch.device, repeats: int, first_order: bool, meta_batch: int = 32) -> dict:
    """MAML meta-gradients: this suite's learner against the plain per-task loop.

    ``fast`` is :class:`~learners.maml.MAML` as the harness runs it (inner steps of all tasks
    batched as grouped convolutions, NCHW, and the zero head's first step moving only the head;
    ``fast_full_first_step`` without that skip; ``fast_channels_last_query`` with the opt-in
    channels-last query side). ``reference`` is
    :func:`~benchmark.references.reference_maml_backward` on the textbook model (NCHW, as PyTorch builds it and
    learn2learn runs it); ``reference_channels_last`` is the same loop on the channels-last
    model, which shows how much of the gain the memory layout alone gives.
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
    query side in chunks of 4 tasks, the default, and all at once), the per-task loop with
    gradient checkpointing, and first order (5w1s15q, strided Conv-4-64)."""
    data = random_dataset((1, 28, 28), 200, 20)
    batch = episodes(data, "train", 5, 1, 15, meta_batch, device)
    variants = {"second_order": {}, "second_order_query_at_once": {"query_chunk": 0},
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


def case_eval(device: torch.device, n_episodes: int) -> dict:
    """Evaluation of one manifest of 5-way 1-shot 15-query episodes, fast path vs reference.

    ProtoNet: each test item embedded once (``cached``) vs every episode embedded from scratch.
    MAML (3 test steps): 32 episodes adapted together vs one at a time on the textbook model.
    """
    from benchmark.evaluate import evaluate

    data = random_dataset((1, 28, 28), 200, 20)
    manifest = EpisodeManifest.generate(data, "test", 5, 1, 15, n_episodes, seed=0)
    loader = EpisodeLoader(data.images, data.mean, data.std, setting=IMAGE)

    def pair(fast: Callable[[], dict], reference: Callable[[], dict]) -> dict:
        runs = {}
        for name, fn in (("fast", fast), ("reference", reference)):
            reset_peak(device)
            seconds = timed(lambda: runs.__setitem__(name, fn()), device)
            runs[name + "_s"], runs[name + "_mb"] = seconds, peak_mb(device)
        return {"episodes": n_episodes, "episode": "5w1s15q",
                "episodes_per_s": round(n_episodes / runs["fast_s"], 1),
                "reference_episodes_per_s": round(n_episodes / runs["reference_s"], 1),
                "ratio": round(runs["reference_s"] / runs["fast_s"], 2),
                "same_accuracies": bool(np.array_equal(runs["fast"]["accuracy"], runs["reference"]["accuracy"])),
                "peak_memory_mb": runs["fast_mb"], "reference_peak_memory_mb": runs["reference_mb"]}

    proto = build("protonet", (1, 28, 28), device)
    out = {"protonet": {"reference": "every episode embedded from scratch", **pair(
        lambda: evaluate(proto, loader, manifest, device, use_embedding_cache=True),
        lambda: evaluate(proto, loader, manifest, device, use_embedding_cache=False, batch_size=1))}}
    maml = build("maml", (1, 28, 28), device, strided=True)
    plain = build("maml", (1, 28, 28), device, strided=True, channels_last=False, task_batching=False)
    plain.load_state_dict(maml.state_dict())
    out["maml"] = {"reference": "one episode at a time, textbook NCHW model", "test_steps": maml.config.test_steps,
                   **pair(lambda: evaluate(maml, loader, manifest, device, batch_size=32),
                          lambda: evaluate(plain, loader, manifest, device, batch_size=1))}
    return out


def case_flops(device: torch.device, repeats: int, compile_backend: str, matmul_size: int = 0,
               way: int = 60) -> dict:
    """Achieved FLOP/s of the ProtoNet Conv-4 training step (60w5s5q) against a large matmul's."""
    from torch.utils.flop_counter import FlopCounterMode

    data = random_dataset((1, 28, 28), 200, 20)
    batch = episodes(data, "train", way, 5, 5, 1, device)
    variants = protonet_variants(device, compile_backend)
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(*variants["eager"], batch)
    flops = counter.get_total_flops()  # convolutions and matmuls of forward + backward
    n = matmul_size or (2048 if device.type == "cpu" else 8192)
    x, y = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    fns = {name: (lambda v=v: train_step(*v, batch)) for name, v in variants.items()}
    result = compare({**fns, "matmul": lambda: x @ y}, repeats, device)
    # medians (typical rates), and best-of-repeats for both sides (peak against peak: the matmul's
    # best is the machine's practical limit; on a shared machine the median matmul varies a lot)
    matmul_rate = 2 * n**3 / result["matmul"]["seconds"]
    matmul_best = 2 * n**3 / min(result["matmul"]["times"])
    out = {"conv4_step_gflop": round(flops / 1e9, 2), "matmul_size": n, "matmul_gflops": round(matmul_rate / 1e9, 1),
           "matmul_best_gflops": round(matmul_best / 1e9, 1)}
    for name in fns:
        prefix = "conv4" if name == "eager" else f"{name}_conv4"
        rate, best = flops / result[name]["seconds"], flops / min(result[name]["times"])
        out[f"{prefix}_gflops"] = round(rate / 1e9, 1)
        out[f"{prefix}_fraction_of_matmul"] = round(rate / matmul_rate, 3)
        out[f"{prefix}_best_fraction_of_matmul_best"] = round(best / matmul_best, 3)
    out["peak_memory_mb"] = result["eager"]["peak_memory_mb"]
    return out


def run(device: str = "cpu", long: bool = False, threads: int = 0, cases: Sequence[str] | None = None,
        compile_backend: str = "inductor", smoke: bool = False) -> dict:
    """Run the cases; returns the JSON-ready result.

    ``smoke`` shrinks every case (1 repeat, meta-batch 4, 20 evaluation episodes, a small matmul)
    to check the script itself; its figures mean nothing.
    """
    from benchmark.provenance import package_versions, resolve_device

    check_compile_backend(compile_backend, "--compile")
    allocator = keep_freed_memory()  # the same for every implementation measured
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    repeats = 1 if smoke else 7 if long else 3
    eval_episodes = 20 if smoke else 600
    meta_batch = 4 if smoke else 32
    way = 10 if smoke else 60  # ProtoNet's Omniglot episodes
    all_cases: dict[str, Callable[[], dict]] = {
        "sampling": lambda: case_sampling(dev, repeats, way),
        "protonet_train": lambda: case_protonet_train(dev, repeats * 2, compile_backend, way),
        "maml_second_order": lambda: case_maml(dev, repeats, first_order=False, meta_batch=meta_batch),
        "maml_first_order": lambda: case_maml(dev, repeats, first_order=True, meta_batch=meta_batch),
        "maml_memory": lambda: case_maml_memory(dev, meta_batch=2 if smoke else 8, steps=2 if smoke else 5),
        "eval": lambda: case_eval(dev, eval_episodes),
        "flops": lambda: case_flops(dev, repeats, compile_backend, 256 if smoke else 0, way),
    }
    unknown = set(cases or ()) - set(all_cases)
    if unknown:
        from tasks.errors import BenchmarkError

        raise BenchmarkError(f"unknown perf case(s) {sorted(unknown)}; choose from {list(all_cases)}")
    result: dict = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
                    else platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                    "mode": "smoke" if smoke else "long" if long else "quick", "repeats": repeats,
                    "compile_backend": compile_backend, "allocator": allocator, "packages": package_versions(), "cases": {}}
    start = time.perf_counter()
    for name, fn in all_cases.items():
        if cases and name not in cases:
            continue
        t = time.perf_counter()
        log.info("perf: %s", name)
        result["cases"][name] = {**fn(), "case_wall_s": round(time.perf_counter() - t, 1)}
        log.info("perf: %s %s", name, json.dumps(result["cases"][name]))
    result["wall_time_s"] = round(time.perf_counter() - start, 1)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--long", action="store_true", help="more repeats: slower, steadier figures")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--cases", default="", help="comma-separated subset of the cases (default: all)")
    parser.add_argument("--compile", default="inductor", metavar="BACKEND",
                        help="torch.compile backend for the compiled ProtoNet figures ('' to skip; default: inductor)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script (figures meaningless)")
    parser.add_argument("--out", default="perf.json", help="where to write the JSON (default: perf.json)")


def main_from_args(args: argparse.Namespace) -> int:
    from benchmark.results import atomic_write_text
    from tasks.errors import BenchmarkError

    out = Path(args.out)
    try:  # before minutes of measuring: an unwritable --out must not lose the figures
        out.parent.mkdir(parents=True, exist_ok=True)
        existed = out.exists()
        with open(out, "a"):
            pass
        if not existed:
            out.unlink()
    except OSError as err:
        raise BenchmarkError(f"cannot write --out {out}: {err.strerror or err}; choose a writable path") from None
    cases = [c.strip() for c in args.cases.split(",") if c.strip()] or None
    result = run(args.device, args.long, args.threads, cases, args.compile, args.smoke)
    text = json.dumps(result, indent=2)
    print(text)
    atomic_write_text(out, text + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tasks.errors import BenchmarkError

    try:
        return main_from_args(args)
    except BenchmarkError as err:
        print(f"error: {err}", file=__import__("sys").stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
