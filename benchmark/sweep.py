"""Sweeps: datasets x methods x shots x seeds, one cell per combination, run by an executor.

A sweep file (YAML) names what to cross::

    base: ../benchmark/configs/default.yaml   # optional: experiment file the cells start from
    config: {train: {episodes: 100}}          # optional: overrides of it (any experiment key)
    datasets: [shapes]                        # or {omniglot: {data_root: ../shared/data}, ...}
    learners: [protonet, maml]                # or `methods: [protonet:image, ...]`
    modalities: [image, image+text]
    fusions: [concat, attention]
    shots: [1, 5]                             # test shots, one cell each
    seeds: [0, 1, 2]
    out: runs/my-sweep

Each (dataset, method, shots, seed) cell is an ordinary run of :class:`benchmark.runner.Benchmark`
with one method and one shot, in its own run folder ``<out>/<run_id>/`` under its own
:class:`~benchmark.checkpoint.RunLock`; all cells share ``<out>/manifests/``, so cells of one
dataset, shot and seed are evaluated on the same episodes and pair in comparisons. Cells never
write the same file, so any number can run at once (in-process, on Ray workers, on other hosts
sharing the folder). Only the driver writes the sweep-level files, after each cell finishes:
``<out>/rows.jsonl`` (the finished cells' rows, in cell order, so the file does not depend on
the executor or on completion order), the tables, and ``<out>/sweep.json`` (each cell's status,
error and wall time).

Resume: a cell whose run folder already holds its rows is finished and never run again; an
unfinished cell resumes from its training checkpoint. A failed cell is recorded with its error and
the others go on. A dataset with a data root is loaded once when the sweep is read: its contents
(fingerprint), not its path, name its cells' run folders.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.checkpoint import RunLock
from benchmark.config import (ExperimentConfig, apply_overrides, default_experiment, load_yaml, merge,
                              to_dict)
from benchmark.methods import Method, expand_methods
from benchmark.results import atomic_write_text
from benchmark.tables import load_rows, summarize
from benchmark.tablewrite import shown, to_markdown, write_tables
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)

SWEEP_KEYS = ("base", "config", "datasets", "methods", "learners", "modalities", "fusions", "shots", "seeds",
              "out", "match_train_shot")


@dataclass(frozen=True)
class Cell:
    """One unit of work: a single method on one dataset, test shot and seed."""

    id: str  # "<dataset>/<method slug>/<shot>s/seed<seed>"
    config: dict[str, Any]  # the cell's complete ExperimentConfig as a dict (what a worker rebuilds)
    run_dir: Path

    def finished(self) -> bool:
        """Its run folder holds its rows (written atomically, all at once, when it finished), complete as far
        as its ``run.json`` records (a damaged cell is run again, which recomputes what is missing)."""
        from benchmark.rowcheck import check_rows

        path = self.run_dir / "rows.jsonl"
        return path.is_file() and path.stat().st_size > 0 and not check_rows(self.run_dir, path).damaged


@dataclass
class Sweep:
    """The cells of a sweep file and the folder they write to."""

    path: Path
    out: Path
    cells: list[Cell] = field(default_factory=list)


def method_text(method: Method) -> str:
    """The ``learner:modalities[:fusion]`` form that ``methods`` entries use."""
    return f"{method.learner}:{'+'.join(method.modalities)}" + (f":{method.fusion}" if method.fusion else "")


def load_sweep(path: str | Path, out: str | None = None) -> Sweep:
    """Read a sweep file and expand it into cells (see the module docstring for the format).

    Args:
        path: the YAML file; ``base`` and relative ``data_root`` values are relative to it.
        out: overrides the file's ``out`` (default ``runs/<file stem>``).

    Raises:
        BenchmarkError: unknown keys, empty lists, unknown names or bad values (named with the file).
    """
    from benchmark.rundir import adopt_legacy_folder, legacy_run_ids, run_id
    from tasks.datasets import load_dataset

    path = Path(path)
    spec = load_yaml(path)
    where = f"sweep file {path}"
    unknown = [k for k in spec if k not in SWEEP_KEYS]
    if unknown:
        raise BenchmarkError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(SWEEP_KEYS)}")
    base = default_experiment() if "base" not in spec else apply_overrides(
        ExperimentConfig(), load_yaml(path.parent / spec["base"]), f"{where}: base {spec['base']}")
    base = apply_overrides(base, spec.get("config") or {}, f"{where}: config")
    selection = {k: _list(spec, k, where) for k in ("methods", "learners", "modalities", "fusions") if k in spec}
    base = apply_overrides(base, selection, where)
    root = Path(out or spec.get("out") or f"runs/{path.stem}").resolve()
    sweep = Sweep(path, root)
    for dataset, options in _datasets(spec, base, where).items():
        cfg = apply_overrides(base, {"dataset": dataset, **options}, f"{where}: datasets.{dataset}")
        if cfg.data_root:
            cfg = replace(cfg, data_root=str((path.parent / cfg.data_root).resolve())
                          if not Path(cfg.data_root).is_absolute() else cfg.data_root)
        methods = expand_methods(cfg)
        if not methods:
            raise BenchmarkError(f"{where}: no method to run on {dataset!r}; check learners, modalities, fusions")
        # with a data root, the data's contents name the runs (loaded once per dataset here, as each cell will)
        fingerprint = None if cfg.data_root is None else load_dataset(
            cfg.dataset, cfg.data_root, **cfg.dataset_options).fingerprint()
        for method in methods:
            for shot in _list(spec, "shots", where, cfg.eval.shots):
                for seed in _list(spec, "seeds", where, [cfg.seed]):
                    cell = _cell_config(cfg, method, shot, seed, root, bool(spec.get("match_train_shot")), where)
                    cell_id = run_id(cell, fingerprint)
                    run_dir = adopt_legacy_folder(str(root), cell_id, legacy_run_ids(cell)) if root.is_dir() \
                        else root / cell_id
                    sweep.cells.append(Cell(f"{dataset}/{method.slug}/{shot}s/seed{seed}", to_dict(cell), run_dir))
    return sweep


def _list(spec: dict, key: str, where: str, default: list | None = None) -> list:
    value = spec.get(key, default)
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BenchmarkError(f"{where}: {key} must be a non-empty list, got {value!r}")
    return value


def _datasets(spec: dict, base: ExperimentConfig, where: str) -> dict[str, dict]:
    """``datasets`` as {name: config overrides}; a list gives names without overrides."""
    value = spec.get("datasets", [base.dataset])
    if isinstance(value, dict):
        bad = [k for k, v in value.items() if not isinstance(v, (dict, type(None)))]
        if bad:
            raise BenchmarkError(f"{where}: datasets.{bad[0]} must map to config keys (e.g. data_root), "
                                 f"got {value[bad[0]]!r}")
        return {k: dict(v or {}) for k, v in value.items()}
    return {name: {} for name in _list({"datasets": value}, "datasets", where)}


def _cell_config(cfg: ExperimentConfig, method: Method, shot: Any, seed: Any, out: Path, match_train_shot: bool,
                 where: str) -> ExperimentConfig:
    """The experiment of one cell: only this method, test shot and seed, written under ``out``."""
    cell = merge(cfg, {"methods": [method_text(method)], "seed": seed, "eval": {"shots": [shot]}, "out": str(out)},
                 where)
    if match_train_shot:  # train on the shot that is tested (e.g. MAML 1-shot for 1-shot tests)
        overrides = {k: {**v, "shot": shot} for k, v in cell.train_overrides.items() if "shot" in v}
        cell = merge(cell, {"train": {"shot": shot}, "train_overrides": {**cell.train_overrides, **overrides}},
                     f"{where}: match_train_shot")
    return cell.validate()


# -- the driver -------------------------------------------------------------------------------------
def run_sweep(sweep: Sweep, executor, merge_every_s: float = 600.0) -> dict[str, dict]:
    """Run every unfinished cell with ``executor``; record each result in ``sweep.json`` as it
    comes, and merge the rows and tables at the end (also after an error or Ctrl-C) and at most
    every ``merge_every_s`` seconds meanwhile (a merge rereads every finished cell's rows).

    Args:
        executor: :class:`benchmark.executors.LocalExecutor` or ``RayExecutor``; its ``run(cells)``
            yields one result dict per cell as the cell finishes.

    Returns:
        ``{cell id: {"status": finished|failed|unsupported|not run, "error": ..., ...}}``.

    Raises:
        BenchmarkError: another driver holds this sweep folder.
    """
    try:
        sweep.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchmarkError(f"cannot create the sweep folder {sweep.out}: {err.strerror or err}; "
                             "choose another --out") from None
    with RunLock(sweep.out):
        status = {c.id: {"status": "not run", "run_dir": str(c.run_dir)} for c in sweep.cells}
        todo = []
        for cell in sweep.cells:
            if cell.finished():
                status[cell.id]["status"] = "finished"
            else:
                todo.append(cell)
        log.info("sweep %s: %d cells, %d finished earlier, %d to run (%s executor), writing to %s",
                 sweep.path, len(sweep.cells), len(sweep.cells) - len(todo), len(todo), executor.name, sweep.out)
        kill_after = int(os.environ.get("MMFS_TEST_KILL_SWEEP_AFTER", "0") or 0)
        start = merged = time.perf_counter()
        try:
            for n, result in enumerate(executor.run(todo), 1):
                if n == kill_after:  # test hook: die like a killed driver (SIGKILL, no clean-up, nothing merged)
                    os.kill(os.getpid(), signal.SIGKILL)
                status[result["cell"]].update({k: v for k, v in result.items() if k != "cell"})
                _log_progress(result, n, len(todo), time.perf_counter() - start)
                write_status(sweep, status, executor.name)
                if time.perf_counter() - merged > merge_every_s:
                    merge_cells(sweep)
                    merged = time.perf_counter()
        finally:
            write_status(sweep, status, executor.name)
            merge_cells(sweep)
    return status


def _log_progress(result: dict, n: int, total: int, elapsed: float) -> None:
    if result["status"] == "finished":
        log.info("[%d/%d] %s finished in %.1f s on %s (sweep %.0f s)", n, total, result["cell"],
                 result["wall_time_s"], result.get("host", "?"), elapsed)
    else:
        log.error("[%d/%d] %s %s: %s", n, total, result["cell"], result["status"], result["error"])


def write_status(sweep: Sweep, status: dict[str, dict], executor: str) -> None:
    """``<out>/sweep.json``: every cell's status (finished, failed, unsupported, not run), error and time."""
    counts = pd.Series([s["status"] for s in status.values()]).value_counts().to_dict()
    record = {"sweep": str(sweep.path), "executor": executor, "counts": counts,
              "cells": [{"cell": c.id, **status[c.id]} for c in sweep.cells]}
    atomic_write_text(sweep.out / "sweep.json", json.dumps(record, indent=2))


def merge_cells(sweep: Sweep) -> pd.DataFrame:
    """Merge the finished cells' rows, in cell order, into ``<out>/rows.jsonl`` and regenerate the
    summary (seed is one of its keys: seeds are never pooled) and the keyed tables
    (:func:`benchmark.tablewrite.write_tables`: paired comparisons, over seeds); returns the summary."""
    done = [c.run_dir for c in sweep.cells if c.finished()]
    atomic_write_text(sweep.out / "rows.jsonl", b"".join((d / "rows.jsonl").read_bytes() for d in done).decode())
    table = summary_of(sweep)
    atomic_write_text(sweep.out / "summary.csv", table.to_csv(index=False))
    atomic_write_text(sweep.out / "summary.md", to_markdown(shown(table, ("config", "manifest_sha256", "run_id"))))
    if not table.empty:
        write_tables(done, sweep.out)
    return table


def summary_of(sweep: Sweep) -> pd.DataFrame:
    """Mean and 95% CI per finished cell (run, seed, way, shot, method) of the sweep."""
    return summarize(load_rows([c.run_dir for c in sweep.cells if c.finished()]))


def failed_cells(status: dict[str, dict]) -> list[str]:
    """Cells that failed (their errors are in ``sweep.json``)."""
    return [cell for cell, s in status.items() if s["status"] == "failed"]


def describe(status: dict[str, dict]) -> Iterable[str]:
    """One line per cell that did not finish, for the end of a sweep."""
    for cell, s in status.items():
        if s["status"] != "finished":
            yield f"{cell}: {s['status']}: {str(s.get('error', ''))[:300]}"

