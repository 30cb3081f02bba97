"""Executors run sweep cells: in this process one after another, or as Ray tasks.

Both run the same function, :func:`run_cell`, which is an ordinary resumable run of one cell in its
own run folder; so the rows do not depend on the executor. ``run(cells)`` yields one result per
cell as it finishes: ``{"cell", "status", "error", "wall_time_s", "host", "pid"}`` with status
``finished``, ``failed`` (a bad setting, a crash, a killed worker) or ``unsupported`` (the method
cannot run on this dataset, e.g. item text on a dataset without captions).
"""
from __future__ import annotations

import logging
import os
import platform
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tasks.errors import BenchmarkError, UnsupportedSetting

log = logging.getLogger(__name__)


def run_cell(cell_id: str, config: dict[str, Any], run_dir: str, lock_wait_s: float = 60.0) -> dict[str, Any]:
    """Run one cell (a :class:`~benchmark.runner.Benchmark` with one method) in this process.

    A cell's own failure is returned, not raised, so that the other cells go on; an interrupt
    (Ctrl-C) is raised.

    Args:
        config: the cell's :class:`~benchmark.config.ExperimentConfig` as a dict.
        run_dir: its run folder; while another process holds it (e.g. a worker of a killed driver
            that Ray is still stopping), wait up to ``lock_wait_s`` seconds before failing.
    """
    from benchmark.config import ExperimentConfig, from_dict
    from benchmark.runner import Benchmark

    start = time.perf_counter()
    status, error = "finished", None
    _wait_for_run_lock(Path(run_dir), lock_wait_s)
    try:
        Benchmark(from_dict(ExperimentConfig, config, f"cell {cell_id}")).run()
    except UnsupportedSetting as err:
        status, error = "unsupported", str(err)
    except BenchmarkError as err:
        status, error = "failed", str(err)
    except Exception as err:  # a bug or a crash in one cell must not stop the sweep: keep its traceback
        status, error = "failed", f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=-8)}"
    return {"cell": cell_id, "status": status, "error": error, "wall_time_s": round(time.perf_counter() - start, 2),
            "host": platform.node(), "pid": os.getpid()}


def _wait_for_run_lock(run_dir: Path, seconds: float) -> None:
    """Return once no process holds ``run_dir``'s lock, or after ``seconds`` (the run then reports
    the holder)."""
    from benchmark.checkpoint import RunLock

    deadline = time.monotonic() + seconds
    while run_dir.is_dir():
        try:
            RunLock(run_dir).acquire().release()
            return
        except BenchmarkError:
            if time.monotonic() > deadline:
                return
            time.sleep(1.0)


class LocalExecutor:
    """Cells one after another in this process."""

    name = "local"

    def run(self, cells: Sequence) -> Iterator[dict[str, Any]]:
        for i, cell in enumerate(cells, 1):
            log.info("[%d/%d] %s: running", i, len(cells), cell.id)
            yield run_cell(cell.id, cell.config, str(cell.run_dir))


def cell_resources(config: dict[str, Any]) -> dict[str, float]:
    """What a cell asks Ray for: its CPU threads (``threads``, 1 when unset) and one GPU when it
    runs on CUDA."""
    resources = {"num_cpus": max(1, int(config.get("threads") or 1))}
    if str(config.get("device", "cpu")).startswith("cuda"):
        resources["num_gpus"] = 1
    return resources


class RayExecutor:
    """Each cell is a Ray task with its resources (see :func:`cell_resources`).

    Args:
        address: a running cluster (``auto`` or ``HOST:PORT``, as ``ray.init``); ``None`` starts a
            local Ray instance for this sweep (or joins ``RAY_ADDRESS`` when set).
        num_cpus: CPUs of a local instance (default: all).
        max_retries: reruns of a cell whose worker died (the rerun resumes from its checkpoint).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, max_retries: int = 1) -> None:
        self.address, self.num_cpus, self.max_retries = address, num_cpus, max_retries

    def _connect(self):
        """Import and initialise Ray; returns (ray, whether this executor started it)."""
        try:
            import ray
        except ImportError:
            raise BenchmarkError("--executor ray needs Ray: pip install 'mmfewshot-bench[ray]' (or pip install "
                                 "ray), or use --executor local") from None
        if ray.is_initialized():
            return ray, False
        address = self.address or os.environ.get("RAY_ADDRESS") or "local"
        kwargs = {"num_cpus": self.num_cpus} if address == "local" else {}
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {"PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        try:
            ray.init(address=address, include_dashboard=False, logging_level="WARNING",
                     runtime_env={"env_vars": env}, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise BenchmarkError(f"cannot connect to the Ray cluster at --address {address}: {err}; start one with "
                                 "`ray start --head` or leave --address out for a local instance") from None
        log.info("Ray: %s", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")})
        return ray, True

    def run(self, cells: Sequence) -> Iterator[dict[str, Any]]:
        if not cells:
            return
        ray, owned = self._connect()
        task = ray.remote(run_cell)
        pending = {}
        try:
            for cell in cells:
                config = dict(cell.config)
                if str(config.get("device", "")).startswith("cuda"):
                    config["device"] = "cuda"  # Ray gives the task its GPU through CUDA_VISIBLE_DEVICES
                ref = task.options(max_retries=self.max_retries, name=cell.id,
                                   **cell_resources(config)).remote(cell.id, config, str(cell.run_dir))
                pending[ref] = cell
            log.info("submitted %d cells to Ray", len(cells))
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as err:  # the worker died (OOM kill, node lost...)
                    yield {"cell": cell.id, "status": "failed", "error": f"{type(err).__name__}: {err}"[:2000],
                           "wall_time_s": None, "host": None, "pid": None}
        finally:
            for ref in pending:  # an interrupted driver: stop its cells (they resume on the next run)
                ray.cancel(ref, force=True)
            if owned:
                ray.shutdown()


def make_executor(name: str, address: str | None = None, num_cpus: int | None = None):
    """The executor named on the command line (``local`` or ``ray``)."""
    if name == "local":
        if address:
            raise BenchmarkError("--address only applies with --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, num_cpus)
    raise BenchmarkError(f"--executor {name!r}: use local or ray")
