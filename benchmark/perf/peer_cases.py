"""The perf cases against the peer-style reference (:mod:`benchmark.perf.peer`): MAML with Finn et
al.'s learned head on synthetic data, and (``--long``) real Omniglot training under Finn's protocol."""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmark.perf.measure import compare, speedup
from benchmark.perf.peer import FinnConv4, learn2learn_step, peer_maml_backward
from benchmark.perf.workloads import IMAGE, build, episodes, random_dataset

log = logging.getLogger(__name__)

#: Finn et al.'s Omniglot protocol: 60,000 meta-iterations of 32 tasks
FINN_ITERATIONS = 60_000


def case_maml_peer(device: torch.device, repeats: int, meta_batch: int = 32, with_learn2learn: bool = True) -> dict:
    """MAML with the learned head (``head="learned"``) against the peer-style reference.

    Omniglot-sized 5-way 1-shot, 28x28, strided Conv-4-64, one inner step of 0.4, with 15 and with
    1 query per class, second and first order. Both start from the same weights; the suite's
    learner and the reference run interleaved, and learn2learn itself too when it is importable
    (its ``OmniglotCNN``: same convolutions, a 64-feature head).
    """
    data = random_dataset((1, 28, 28), 200, 20)
    entries, largest = [], 0.0
    for queries in (15, 1):
        batch = episodes(data, "train", 5, 1, queries, meta_batch, device)
        for order in ("second", "first"):
            first_order = order == "first"
            learner = build("maml", (1, 28, 28), device, strided=True, head="learned", first_order=first_order,
                            train_steps=1, train_step_size=0.4).train()
            peer = FinnConv4().to(device)
            peer.load_from_learner(learner.state_dict())

            def fast() -> list[torch.Tensor]:
                learner.zero_grad(set_to_none=True)
                learner.loss(batch).backward()
                return [p.grad for p in learner.parameters()]

            def reference() -> list[torch.Tensor]:
                peer.zero_grad(set_to_none=True)
                peer_maml_backward(peer, batch, 1, 0.4, first_order)
                return [p.grad for p in peer.parameters()]

            # the learner's parameters: encoder, then head; the reference's in the same order
            diff = max(float((a - b).abs().max()) for a, b in zip([g.clone() for g in fast()], reference()))
            scale = max(float(p.grad.abs().max()) for p in peer.parameters())
            largest = max(largest, diff)
            fns = {"fast": fast, "peer": reference}
            l2l = learn2learn_step(batch, 0.4, first_order) if with_learn2learn else None
            if l2l is not None:
                fns["learn2learn"] = l2l
            result = compare(fns, repeats, device)
            entry = {"queries": queries, "order": order, "head": "learned",
                     "tasks_per_s": round(meta_batch / result["fast"]["seconds"], 2),
                     "peer_tasks_per_s": round(meta_batch / result["peer"]["seconds"], 2),
                     "ratio": speedup(result, "peer", "fast"), "max_abs_grad_diff": diff, "max_abs_grad": scale}
            if l2l is not None:
                entry.update(learn2learn_tasks_per_s=round(meta_batch / result["learn2learn"]["seconds"], 2),
                             ratio_to_learn2learn=speedup(result, "learn2learn", "fast"),
                             peer_ratio_to_learn2learn=speedup(result, "learn2learn", "peer"))
            entries.append(entry)
            log.info("perf: maml_peer %s", entry)
    return {"episode": "5w1s", "meta_batch": meta_batch, "inner_steps": 1, "inner_step_size": 0.4,
            "backbone": "conv4-64-strided", "reference": "peer-style loop (benchmark/perf/peer.py)",
            "entries": entries, "max_abs_grad_diff": largest}


def case_maml_omniglot(device: torch.device, data_root: str = "../shared/data", iterations: int = 200,
                       warmup: int = 20) -> dict:
    """Real Omniglot MAML training under Finn et al.'s protocol, timed, projected to 60,000 iterations.

    5-way 1-shot 1-query, meta-batch 32, one inner step of 0.4, Adam 1e-3, strided Conv-4-64 with
    the learned head, on the Vinyals split read from ``data_root``. Each timed iteration is the
    training loop's (:func:`benchmark.training.meta_train`): 32 episodes sampled and loaded,
    the meta-loss, backward and an Adam step; the first ``warmup`` iterations are not timed (the
    allocator and oneDNN's caches settle over the first few dozen). The training characters are
    the config's (``benchmark/configs/omniglot_maml_5w1s.yaml``: Vinyals train + val, 1,200 x 4
    rotations). No validation, as the config (``val_every: 0``: the reference code's validation
    only monitors, and the row is the last iterate). Returns a note instead when the data is missing.
    """
    from tasks.datasets import load_dataset
    from tasks.episode import EpisodeLoader
    from tasks.sampler import EpisodeSampler

    if not (Path(data_root) / "omniglot-py").is_dir():
        return {"skipped": f"no Omniglot under {data_root}/omniglot-py; run from a checkout with ../shared/data "
                           "beside it to measure real training"}
    start = time.perf_counter()
    data = load_dataset("omniglot", data_root, split="vinyals_trainval")
    load_s = time.perf_counter() - start
    learner = build("maml", (1, 28, 28), device, strided=True, head="learned", train_steps=1, train_step_size=0.4,
                    test_steps=3)
    optimiser = torch.optim.Adam(learner.parameters(), lr=1e-3)
    sampler = EpisodeSampler(data, "train", 5, 1, 1)
    loader = EpisodeLoader(data.images, data.mean, data.std, setting=IMAGE)
    rng = np.random.default_rng(0)

    def iteration(step: int) -> float:
        t = time.perf_counter()
        learner.train()
        batch = [loader.load(sampler.sample(rng, step)).to(device) for _ in range(32)]
        loss = learner.loss(batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return time.perf_counter() - t

    times = [iteration(step) for step in range(warmup + iterations)][warmup:]
    per_iteration = statistics.median(times)
    return {"dataset": "omniglot (vinyals_trainval split)", "episode": "5w1s1q", "meta_batch": 32, "head": "learned",
            "warmup_iterations": warmup, "timed_iterations": iterations,
            "median_iteration_s": round(per_iteration, 4), "mean_iteration_s": round(statistics.mean(times), 4),
            "tasks_per_s": round(32 / per_iteration, 1), "dataset_load_s": round(load_s, 1),
            "projected_60000_iterations_h": round(FINN_ITERATIONS * per_iteration / 3600, 2)}
