"""Data-parallel meta-training: ``torchrun --nproc-per-node N run_benchmark.py ...``.

Every rank draws the same meta-batch with the same episode generator (so the generator, and a
checkpoint of it, is the single-process one) and trains on its contiguous share of the episodes;
gradients are then summed across ranks with each rank's loss weighted by its share, which is
exactly the gradient of the single-process mean loss over the whole meta-batch. The optimiser
steps are therefore those of one process, up to float summation order. Batch-norm running
statistics, which each rank updates from its own episodes only, are combined afterwards into
what one process would have computed from all of them in order (:meth:`DataParallel.sync_batch_norm`).

Rank 0 alone writes files (checkpoints, rows, ``run.json``) and validates; the others receive its
validation accuracy, so every rank keeps the same best state. A restarted job resumes from rank
0's checkpoint, which every rank reads. Backend: NCCL for CUDA devices (each rank on
``cuda:LOCAL_RANK``), gloo on CPU.

Limits: the meta-batch must have at least one episode per rank; learners that draw random numbers
inside their loss (none in this suite does) would draw different numbers than one process.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch

from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class DataParallel:
    """This process's place in a data-parallel job (``world_size == 1``: a single process, a no-op)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # where collective buffers live (the rank's GPU for NCCL)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous share of a meta-batch (all of it in a single process).

        Raises:
            BenchmarkError: fewer items than ranks (a rank would have nothing to train on).
        """
        n = len(items)
        if n < self.world_size:
            raise BenchmarkError(f"train.meta_batch={n} is smaller than the {self.world_size} data-parallel "
                                 f"processes; use --nproc-per-node {n} or fewer, or raise train.meta_batch")
        return list(items[self.rank * n // self.world_size:(self.rank + 1) * n // self.world_size])

    def mean_loss(self, loss: torch.Tensor, share: int, total: int) -> float:
        """The meta-batch's mean loss from each rank's mean over its ``share`` of ``total`` episodes."""
        if not self.active:
            return float(loss.item())
        value = (loss.detach().double() * (share / total)).reshape(1).to(self.device)
        torch.distributed.all_reduce(value)
        return float(value.item())

    def average_gradients(self, params: Sequence[torch.nn.Parameter], share: int, total: int) -> None:
        """Replace each rank's gradients by the meta-batch's: the sum over ranks of ``share / total``
        times the rank's gradient (one flat all-reduce; a parameter without a gradient on every rank
        keeps none, as in one process)."""
        if not self.active:
            return
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) * (share / total) for p in params]
        present = torch.tensor([float(p.grad is not None) for p in params], device=parts[0].device)
        flat = torch.cat(parts + [present.to(parts[0].dtype)])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, used in zip(params, flat[-len(params):].tolist()):
            n = p.numel()
            if used:
                p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def from_main(self, compute: Callable[[], float]) -> float:
        """``compute()`` on rank 0 only (e.g. validation), its value on every rank."""
        if not self.active:
            return compute()
        value = torch.tensor([compute() if self.is_main else 0.0], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(value, 0)
        return float(value.item())

    def batch_norm_state(self, module: torch.nn.Module) -> list[tuple]:
        """Running statistics before a step (only when data-parallel): what :meth:`sync_batch_norm` needs."""
        if not self.active:
            return []
        return [(m, m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
                for m in _running_batch_norms(module)]

    def sync_batch_norm(self, before: Iterable[tuple]) -> None:
        """Set the running statistics to those one process gets from the whole meta-batch in order.

        A running statistic moves as ``r <- (1 - m) r + m x`` at each of ``u_k`` updates on rank k, so
        one process ends at ``(1 - m)^U r0 + sum_k (1 - m)^(updates after rank k) (r_k - (1 - m)^u_k r0)``.
        """
        for module, mean0, var0, count0 in before:
            if module.momentum is None:
                raise BenchmarkError("data-parallel training does not support BatchNorm with momentum=None "
                                     "(cumulative averages); train in one process")
            updates = torch.zeros(self.world_size, dtype=torch.float64, device=self.device)
            updates[self.rank] = int(module.num_batches_tracked) - count0
            torch.distributed.all_reduce(updates)
            keep = 1.0 - module.momentum
            after = float(updates[self.rank + 1:].sum())
            mine = float(updates[self.rank])
            for name, start in (("running_mean", mean0), ("running_var", var0)):
                stat = getattr(module, name)
                part = ((stat.double() - keep ** mine * start.double()) * keep ** after).to(self.device)
                torch.distributed.all_reduce(part)
                stat.copy_((keep ** float(updates.sum()) * start.double() + part.to(stat.device)).to(stat.dtype))
            module.num_batches_tracked.fill_(count0 + int(updates.sum()))


def _running_batch_norms(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


_current = DataParallel()


def current() -> DataParallel:
    """The data-parallel context of this process (a single process unless :func:`init_from_env` ran)."""
    return _current


def init_from_env(device: str) -> DataParallel:
    """Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``PORT``); without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing happens.

    Raises:
        BenchmarkError: CUDA asked for with fewer GPUs than local ranks.
    """
    global _current
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or _current.active:
        return _current
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise BenchmarkError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                                 "use --nproc-per-node at most the number of GPUs, or --device cpu")
        torch.cuda.set_device(local_rank)  # "cuda" now means this rank's GPU
    backend = "nccl" if cuda else "gloo"
    timeout = timedelta(seconds=float(os.environ.get("MMFS_DIST_TIMEOUT_S", 4 * 3600)))  # rank 0 evaluates alone
    torch.distributed.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    _current = DataParallel(rank, world_size, torch.device("cuda", local_rank) if cuda else torch.device("cpu"))
    log.info("data-parallel rank %d of %d (%s)", rank, world_size, backend)
    return _current


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun job)."""
    global _current
    if _current.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _current = DataParallel()


def follow(bench) -> None:
    """What a rank other than 0 does instead of :meth:`Benchmark.run`: train the same methods as rank
    0, in step with it, and write nothing (its copies of the test and validation manifests go to a
    private temporary folder; rank 0 evaluates and writes the results).

    Rank 0 cannot append rows before the first step, which needs every rank, so both read the
    same ``rows.jsonl`` (and ``run.json``) to decide which methods are finished, and which lost rows
    rank 0 recomputes from a saved model without training (:func:`benchmark.runner.trains`).
    """
    from benchmark.rowcheck import RowsCheck, check_rows
    from benchmark.runner import trains

    check = check_rows(bench.run_dir, bench.run_dir / "rows.jsonl") if bench.resume else RowsCheck(Path(), [], False)
    private = Path(tempfile.mkdtemp(prefix=f"mmfs-rank{_current.rank}-"))
    bench.manifest_dir = private
    if bench.cfg.threads:
        torch.set_num_threads(bench.cfg.threads)
    try:
        bench.prepare()
        for method in bench.methods:
            if trains(bench, method, check):
                bench.train(bench.build_learner(method), method)
    finally:
        shutil.rmtree(private, ignore_errors=True)
