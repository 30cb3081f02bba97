"""Process-level settings that make CPU training faster without changing any number."""
from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_state: dict[str, object] = {}


def keep_freed_memory() -> dict[str, object]:
    """Let glibc keep freed memory for reuse instead of giving it back to the kernel.

    By default glibc serves large blocks (the activations of a training step) with ``mmap`` and
    returns them on ``free``, so the next step takes a page fault for every 4 KiB it touches
    again, a large share of a Conv-4 training step on CPU (docs/speed.md, "Design choices"; check
    with ``python run_benchmark.py perf``). This raises the ``mmap`` and trim thresholds to 1 GiB
    (as jemalloc or tcmalloc, which PyTorch's CPU tuning guide recommends, effectively do).
    The price: the process keeps its peak memory until it exits.

    Does nothing off glibc Linux or with ``MMFS_MALLOC_DEFAULTS=1``. Idempotent; returns what
    was done, for ``run.json``.
    """
    if _state:
        return dict(_state)
    if os.environ.get("MMFS_MALLOC_DEFAULTS") == "1":
        _state.update(keep_freed_memory=False, reason="MMFS_MALLOC_DEFAULTS=1")
    elif not sys.platform.startswith("linux"):
        _state.update(keep_freed_memory=False, reason=f"not glibc Linux ({sys.platform})")
    else:
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = all(libc.mallopt(param, value) == 1 for param, value in (
                (_M_MMAP_THRESHOLD, 2**30), (_M_TRIM_THRESHOLD, 2**30), (_M_TOP_PAD, 64 * 2**20)))
            _state.update(keep_freed_memory=ok, **({} if ok else {"reason": "mallopt refused"}))
        except (OSError, AttributeError) as err:
            _state.update(keep_freed_memory=False, reason=f"no glibc mallopt ({err})")
    log.debug("allocator: %s", _state)
    return dict(_state)


def check_compile_backend(backend: str, key: str = "train.compile") -> None:
    """Raise a clear error unless ``backend`` is empty (eager) or a ``torch.compile`` backend."""
    if not backend:
        return
    from torch._dynamo import list_backends

    from tasks.errors import BenchmarkError

    if backend not in list_backends(exclude_tags=()):
        raise BenchmarkError(f"{key}={backend!r} is not a torch.compile backend; use one of "
                             f"{sorted(list_backends())} (inductor is the usual one), or '' for none")
