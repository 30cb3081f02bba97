"""Timing and memory measurement for the speed benchmark (:mod:`benchmark.perf`).

Functions are compared interleaved (A, B, A, B, ...) so that load from other processes hits
both sides alike; :func:`speedup` pairs the rounds. Memory is the CUDA allocator's on a GPU,
else the process's resident set from /proc (Linux).
"""
from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA allocator, or the process's peak RSS on Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        import ctypes
        import gc

        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed memory back so the new peak starts low
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
    except (OSError, AttributeError):
        pass


def _process_status_mb(field: str) -> float | None:
    """A memory figure of this process from /proc/self/status (``VmRSS``, ``VmHWM``) in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def current_mb(device: torch.device) -> float:
    """Memory in use now (MiB): CUDA allocated, else the process's resident set."""
    if device.type == "cuda":
        return round(torch.cuda.memory_allocated(device) / 2**20, 1)
    rss = _process_status_mb("VmRSS")
    return float("nan") if rss is None else rss


def peak_mb(device: torch.device) -> float:
    """Peak memory (MiB) since :func:`reset_peak`: CUDA allocated, else the process's peak RSS."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    peak = _process_status_mb("VmHWM")
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1) if peak is None else peak


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def compare(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
            warmup: int = 1) -> dict[str, dict]:
    """Median seconds per call of each function, calls interleaved; peak memory of each.

    Returns name -> ``{"seconds": median, "times": [per round], "peak_memory_mb": peak during the
    warm-up calls, "peak_growth_mb": that peak minus the memory in use before them}``.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    memory, growth = {}, {}
    for name, fn in fns.items():
        reset_peak(device)
        before = current_mb(device)
        for _ in range(warmup):
            fn()
        memory[name] = peak_mb(device)
        growth[name] = round(memory[name] - before, 1)
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {k: {"seconds": statistics.median(v), "times": v, "peak_memory_mb": memory[k],
                "peak_growth_mb": growth[k]} for k, v in times.items()}


def speedup(result: dict[str, dict], slow: str, fast: str) -> float:
    """Median over rounds of ``slow``'s time / ``fast``'s time (each round runs both back to back).

    Pairing the rounds keeps a burst of load from other processes, which slows both, out of the
    ratio better than a ratio of medians does.
    """
    return round(statistics.median(a / b for a, b in zip(result[slow]["times"], result[fast]["times"])), 2)
