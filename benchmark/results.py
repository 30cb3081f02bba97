"""The results store: per-episode rows, summaries and the run's provenance record.

Layout of one run directory::

    <out>/<run_id>/rows.jsonl      one row per (method, way, shot, episode, metric)
    <out>/<run_id>/run.json        resolved config, seeds, manifest hashes, versions, timings, and
                                   what was written to rows.jsonl ("rows", benchmark.rowcheck)
    <out>/<run_id>/summary.csv     generated from rows.jsonl, never edited by hand
    <out>/<run_id>/summary.md
    <out>/<run_id>/comparison*.csv/.md  paired tables (benchmark.tablewrite)
    <out>/<run_id>/train_log/      per-step training log of each method (<slug>.csv, benchmark.trainlog)
    <out>/<run_id>/checkpoints/    best model of each method (<slug>.pt) and, while a method
                                   trains, its resumable training state (<slug>.train.pt)
    <out>/<run_id>/rows.damaged-<time>.jsonl  a damaged rows file, copied before a rerun repaired it
    <out>/<run_id>/.lock           held (flock) by the process writing the run folder
    <out>/manifests/               fixed test episodes, shared by every run in <out>

Every file is written atomically (temporary file, ``fsync``, then rename):
``rows.jsonl`` gets all rows of a method at once when the method has finished,
so it always holds whole methods, and an interrupt never loses a finished one; rows
lost later (a truncated or edited file) are detected against ``run.json`` and
recomputed by the next run (:mod:`benchmark.rowcheck`).
A write that fails (full disk, read-only folder) raises a :class:`BenchmarkError`
and leaves the previous contents in place.
"""
from __future__ import annotations

import dataclasses
import errno
import gzip
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from tasks.atomic import atomic_write
from tasks.errors import BenchmarkError

def write_error(path: Path, err: OSError) -> BenchmarkError:
    """A user-facing error for a failed write (full disk, read-only or unwritable folder)."""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied"}.get(err.errno, err.strerror or str(err))
    return BenchmarkError(
        f"cannot write {path}: {reason}. Files written before are intact (finished methods and the last "
        "checkpoint); free space or choose another --out, then rerun the same command to continue"
    )


def atomic_save(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """:func:`tasks.atomic.atomic_write` for the run folder: ``write(f)`` fills a temporary file that
    replaces ``path``.

    Raises:
        BenchmarkError: the write failed (e.g. ``ENOSPC``); ``path`` keeps its previous contents.
    """
    try:
        atomic_write(path, write)
    except OSError as err:
        raise write_error(Path(path), err) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_save`)."""
    atomic_save(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode())


def _complete_lines(path: Path) -> bytes:
    """The contents of ``path`` up to its last newline (drops a partial line left by a crash)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as err:
        raise BenchmarkError(f"cannot read {path}: {err.strerror or err}") from None
    return data[: data.rfind(b"\n") + 1]


def append_rows(path: Path, rows: list[dict]) -> None:
    """Add rows (all rows of one finished method) to a JSONL file, atomically.

    The file is rewritten through a temporary file and ``os.replace``, so it always
    holds whole methods: a kill or a full disk during the write leaves the previous
    rows untouched, and a method is either entirely in the file or not at all.
    Concurrent writers are excluded by the run-folder lock (:class:`benchmark.checkpoint.RunLock`).
    """
    path = Path(path)
    new = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    atomic_write_bytes(path, _complete_lines(path) + new)


def rows_file(run_dir: Path) -> Path:
    """The rows of a run folder: ``rows.jsonl``, or ``rows.jsonl.gz`` where a folder kept with
    committed results holds only that (the plain file name when neither exists)."""
    plain = Path(run_dir) / "rows.jsonl"
    gzipped = plain.with_name("rows.jsonl.gz")
    return gzipped if not plain.exists() and gzipped.exists() else plain


def parse_jsonl(path: Path) -> tuple[list[dict], list[int]]:
    """The records of a ``.jsonl`` or ``.jsonl.gz`` file (none if it is missing) and the numbers (from 1)
    of its lines that are not a JSON record: cut off by a crash or a kill, or damaged.

    Raises:
        BenchmarkError: the file cannot be read or decompressed.
    """
    path = Path(path)
    if not path.exists():
        return [], []
    try:
        data = path.read_bytes()
        text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode(errors="replace")
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise BenchmarkError(f"cannot read {path}: {err}; rerun the run that wrote it to recompute it") from None
    records, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif line.strip():
            bad.append(number)
    return records, bad


def read_jsonl(path: Path) -> list[dict]:
    """The records of a ``.jsonl`` or ``.jsonl.gz`` file (none if it is missing), skipping a partial
    line left by a crash or a kill."""
    return parse_jsonl(path)[0]


def read_rows(path: Path) -> pd.DataFrame:
    """Read rows (``.jsonl`` or ``.jsonl.gz``), ignoring a trailing partial line left by a crash."""
    return pd.DataFrame(read_jsonl(path))


def episode_rows(run_id: str, method, setting, cfg, manifest, metrics: dict[str, list[float]]) -> list[dict]:
    """The rows of ``rows.jsonl`` for one method on one test manifest: one per episode and metric, each
    keyed by the setting the method was tested in (see :func:`benchmark.tables.method_setting`).

    Args:
        method: a :class:`~benchmark.methods.Method`; setting: the run's
            :class:`~tasks.episode.TaskSetting`; cfg: the :class:`~benchmark.config.ExperimentConfig`.
        manifest: the :class:`~tasks.sampler.EpisodeManifest` evaluated on.
        metrics: metric name -> per-episode values (``len(manifest.episodes)`` each).
    """
    from benchmark.metrics import SCHEMA_VERSION
    from benchmark.tables import method_setting

    common = {
        "run_id": run_id, "learner": method.learner, "fusion": method.fusion or "none",
        "modalities": "+".join(method.modalities), "schema_version": SCHEMA_VERSION,
        "setting": method_setting(setting.support, setting.query, method.modalities),
        "dataset": cfg.dataset, "n_way": manifest.n_way, "n_shot": manifest.n_shot, "n_query": manifest.n_query,
        "seed": cfg.seed, "manifest_sha256": manifest.sha256,
    }
    return [{**common, "episode": i, "metric": name, "value": float(v)}
            for name, values in metrics.items() for i, v in enumerate(values)]


def jsonable(value):
    """Convert numpy scalars and arrays for ``json.dumps``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def run_record(bench, status: str, wall_time_s: float) -> dict:
    """The provenance record ``run.json`` of a :class:`~benchmark.runner.Benchmark`: resolved config,
    seeds, data fingerprint, manifest hashes, per-method records, versions, device and timings."""
    import torch

    from benchmark.config import to_dict
    from benchmark.provenance import cpu_model, git_commit, package_versions, peak_memory_mb

    from benchmark.metrics import SCHEMA_VERSION

    data = bench.dataset
    return {
        "schema_version": SCHEMA_VERSION, "run_id": bench.run_id, "status": status, "config": to_dict(bench.cfg), "seeds": bench.seeds,
        "setting": dataclasses.asdict(bench.setting),
        "dataset": {"name": bench.cfg.dataset, "fingerprint": data and data.fingerprint(),
                    "image_shape": data and list(data.image_shape)},
        "manifests": {f"{w}w{s}s": {"sha256": m.sha256, "path": str(p)}
                      for (w, s), (m, p) in bench.test_manifests.items()},
        "val_manifest_sha256": bench.val_manifest and bench.val_manifest.sha256,
        "methods": bench.method_records, "rows": bench.rows_record, "skipped": bench.skipped,
        "git_commit": git_commit((bench.cfg.out,)),
        "packages": package_versions(), "device": str(bench.device), "torch_threads": torch.get_num_threads(),
        "allocator": bench.allocator, "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "host": platform.node(), "cpu": cpu_model(), "platform": platform.platform(),
        "wall_time_s": round(wall_time_s, 2),
        "peak_memory_mb": round(peak_memory_mb(bench.device), 1),
    }


def write_run_record(run_dir: Path, record: dict) -> None:
    """Write ``run.json`` atomically."""
    atomic_write_text(Path(run_dir) / "run.json", json.dumps(record, indent=2, default=jsonable))


def previous_method_records(run_dir: Path) -> dict[str, dict]:
    """The per-method records of an earlier, unfinished run in ``run_dir`` (empty if none or unreadable)."""
    try:
        return json.loads((Path(run_dir) / "run.json").read_text()).get("methods", {})
    except (OSError, ValueError):
        return {}
