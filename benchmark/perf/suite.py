"""Speed benchmark: throughput, peak memory and ratios against reference implementations.

Run ``python -m benchmark.perf`` (or ``python run_benchmark.py perf``). It prints one JSON
object and writes it to ``--out``. Every ratio compares two implementations measured in the
same run, interleaved (A, B, A, B, ...), and each throughput is the median over repeats, so
that load from other processes hits both sides alike. Data is random uint8 images of the
benchmark's shapes, so no dataset is needed.

Cases (the references are in :mod:`benchmark.perf.references`, the timing in :mod:`benchmark.perf.measure`,
the synthetic data in :mod:`benchmark.perf.workloads`, the MAML cases in :mod:`benchmark.perf.maml_cases`):
  * ``sampling``: episode sampling + batching (episodes/s) for 28x28x1 and 84x84x3 images, as
    a fraction of a ProtoNet training step on the same episodes;
  * ``protonet_train``: ProtoNet meta-training, Omniglot-sized 60-way 5-shot 5-query, this suite's
    Conv-4-64 (eager and compiled) against the textbook Conv-4;
  * ``maml_second_order`` / ``maml_first_order``: 5-way 1-shot 15-query, meta-batch 32, one
    inner step, strided Conv-4-64 (tasks/s) against the plain per-task loop, with the largest
    gradient difference and two float32 yardsticks for it (the reference with its tasks reordered,
    and the reference on the channels-last model), and the query side alone (forward and backward
    at the adapted weights, which batching the inner loops cannot remove) with the ceiling it sets;
  * ``maml_peer``, ``maml_omniglot`` (``--long`` only): see :mod:`benchmark.perf.peer_cases`;
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
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from benchmark.perf.measure import compare, peak_mb, reset_peak, speedup, timed
from benchmark.perf.maml_cases import case_maml, case_maml_memory
from benchmark.perf.peer_cases import case_maml_omniglot, case_maml_peer
from benchmark.perf.references import textbook_conv4
from benchmark.runtime import check_compile_backend, keep_freed_memory
from benchmark.perf.workloads import IMAGE, build, episodes, random_dataset, train_step
from learners.base import Learner
from tasks.episode import EpisodeLoader
from tasks.sampler import EpisodeManifest, EpisodeSampler

log = logging.getLogger(__name__)


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
        compile_backend: str = "inductor", smoke: bool = False, data_root: str = "../shared/data") -> dict:
    """Run the cases; returns the JSON-ready result.

    ``smoke`` shrinks every case (1 repeat, meta-batch 4, 20 episodes) to check the script only.
    """
    from benchmark.provenance import cpu_model, package_versions, resolve_device

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
        "maml_peer": lambda: case_maml_peer(dev, repeats, meta_batch=meta_batch),
        "maml_omniglot": lambda: case_maml_omniglot(dev, data_root, iterations=2 if smoke else 200, warmup=1 if smoke else 20),
        "maml_memory": lambda: case_maml_memory(dev, meta_batch=2 if smoke else 8, steps=2 if smoke else 5),
        "eval": lambda: case_eval(dev, eval_episodes),
        "flops": lambda: case_flops(dev, repeats, compile_backend, 256 if smoke else 0, way),
    }
    unknown = set(cases or ()) - set(all_cases)
    if unknown:
        from tasks.errors import BenchmarkError

        raise BenchmarkError(f"unknown perf case(s) {sorted(unknown)}; choose from {list(all_cases)}")
    result: dict = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
                    else cpu_model(), "torch_threads": torch.get_num_threads(),
                    "mode": "smoke" if smoke else "long" if long else "quick", "repeats": repeats,
                    "compile_backend": compile_backend, "allocator": allocator, "packages": package_versions(), "cases": {}}
    start = time.perf_counter()
    for name, fn in all_cases.items():
        if cases and name not in cases or not cases and name == "maml_omniglot" and not long:
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
    parser.add_argument("--data-root", default="../shared/data", help="omniglot-py/'s folder for --long's real data")
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
    result = run(args.device, args.long, args.threads, cases, args.compile, args.smoke, args.data_root)
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
