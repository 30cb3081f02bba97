"""The results store: per-episode rows, summaries and the run's provenance record.

Layout of one run directory::

    <out>/<run_id>/rows.jsonl      one row per (method, way, shot, episode, metric)
    <out>/<run_id>/run.json        resolved config, seeds, manifest hashes, versions, timings
    <out>/<run_id>/summary.csv     generated from rows.jsonl, never edited by hand
    <out>/<run_id>/summary.md
    <out>/<run_id>/checkpoints/    best model of each method (<slug>.pt) and, while a method
                                   trains, its resumable training state (<slug>.train.pt)
    <out>/<run_id>/.lock           held (flock) by the process writing the run folder
    <out>/manifests/               fixed test episodes, shared by every run in <out>

Every file is written atomically (temporary file, ``fsync``, then rename):
``rows.jsonl`` gets all rows of a method at once when the method has finished,
so it always holds whole methods, and an interrupt never loses a finished one.
A write that fails (full disk, read-only folder) raises a :class:`BenchmarkError`
and leaves the previous contents in place.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from benchmark.stats import mean_ci95
from tasks.atomic import atomic_write
from tasks.errors import BenchmarkError

SUMMARY_KEYS = ["learner", "fusion", "modalities", "setting", "dataset", "n_way", "n_shot", "n_query"]


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


def read_rows(path: Path) -> pd.DataFrame:
    """Read rows, ignoring a trailing partial line left by a crash."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pd.DataFrame(rows)


def episode_rows(run_id: str, method, setting, cfg, manifest, metrics: dict[str, list[float]]) -> list[dict]:
    """The rows of ``rows.jsonl`` for one method on one test manifest: one per episode and metric.

    Args:
        method: a :class:`~benchmark.methods.Method`; setting: the run's
            :class:`~tasks.episode.TaskSetting`; cfg: the :class:`~benchmark.config.ExperimentConfig`.
        manifest: the :class:`~tasks.sampler.EpisodeManifest` evaluated on.
        metrics: metric name -> per-episode values (``len(manifest.episodes)`` each).
    """
    common = {
        "run_id": run_id, "learner": method.learner, "fusion": method.fusion or "none",
        "modalities": "+".join(method.modalities), "setting": setting.describe(),
        "dataset": cfg.dataset, "n_way": manifest.n_way, "n_shot": manifest.n_shot, "n_query": manifest.n_query,
        "seed": cfg.seed, "manifest_sha256": manifest.sha256,
    }
    return [{**common, "episode": i, "metric": name, "value": float(v)}
            for name, values in metrics.items() for i, v in enumerate(values)]


def summarize(rows: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Mean and 95% CI (in percent) per method and protocol, from per-episode rows."""
    columns = SUMMARY_KEYS + ["n_episodes", "accuracy", "ci95", "manifest_sha256"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows = rows[rows["metric"] == metric]
    out = []
    for key, group in rows.groupby(SUMMARY_KEYS, sort=False, dropna=False):
        mean, ci = mean_ci95(group["value"].to_numpy())
        out.append(dict(zip(SUMMARY_KEYS, key), n_episodes=len(group), accuracy=round(100 * mean, 2),
                        ci95=round(100 * ci, 2), manifest_sha256=group["manifest_sha256"].iloc[0]))
    return pd.DataFrame(out, columns=columns)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (no optional dependency needed)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.1e}" if 0 < abs(value) < 0.01 else f"{value:.2f}"  # p-values stay readable
    return str(value)


def write_summary(run_dir: Path) -> pd.DataFrame:
    """Regenerate ``summary.csv`` and ``summary.md`` from ``rows.jsonl``."""
    table = summarize(read_rows(run_dir / "rows.jsonl"))
    atomic_write_text(run_dir / "summary.csv", table.to_csv(index=False))
    shown = table.drop(columns=["manifest_sha256"])
    atomic_write_text(run_dir / "summary.md", to_markdown(shown))
    return table


def format_table(table: pd.DataFrame) -> str:
    """The one-screen summary printed at the end of a run."""
    if table.empty:
        return "(no results)"
    shown = table[["learner", "fusion", "modalities", "n_way", "n_shot", "accuracy", "ci95"]].copy()
    shown["accuracy"] = [f"{a:6.2f} ± {c:.2f}" for a, c in zip(table["accuracy"], table["ci95"])]
    shown = shown.drop(columns=["ci95"]).rename(columns={"accuracy": "accuracy % (95% CI)"})
    return shown.to_string(index=False)


def jsonable(value):
    """Convert numpy scalars and arrays for ``json.dumps``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def compare_to_baseline(rows: pd.DataFrame, baseline: str = "image") -> pd.DataFrame:
    """Paired comparison of every method against the same learner's ``baseline`` modality setting.

    Pairs are per episode of one manifest (same ``manifest_sha256``), so the test
    is a paired t-test on per-episode accuracy differences. Accuracies, the
    mean difference and its 95% CI are in percent.
    """
    from benchmark.stats import paired_test

    columns = ["learner", "fusion", "modalities", "n_way", "n_shot", "accuracy", "ci95", "baseline",
               "baseline_accuracy", "difference", "difference_ci95", "p_value", "n_episodes"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    acc = rows[rows["metric"] == "accuracy"]
    out = []
    for (learner, sha), group in acc.groupby(["learner", "manifest_sha256"], sort=False):
        base = group[(group["modalities"] == baseline) & (group["fusion"] == "none")]
        if base.empty:
            continue
        base_values = base.sort_values("episode")["value"].to_numpy()
        for (fusion, modalities), method in group.groupby(["fusion", "modalities"], sort=False):
            if modalities == baseline and fusion == "none":
                continue
            values = method.sort_values("episode")["value"].to_numpy()
            if len(values) != len(base_values):
                continue
            test = paired_test(values, base_values)
            mean, ci = mean_ci95(values)
            first = method.iloc[0]
            out.append({
                "learner": learner, "fusion": fusion, "modalities": modalities, "n_way": int(first["n_way"]),
                "n_shot": int(first["n_shot"]), "accuracy": round(100 * mean, 2), "ci95": round(100 * ci, 2),
                "baseline": f"{learner}[{baseline}]", "baseline_accuracy": round(100 * float(base_values.mean()), 2),
                "difference": round(100 * test.mean_difference, 2), "difference_ci95": round(100 * test.ci95, 2),
                "p_value": float(f"{test.p_value:.3g}"), "n_episodes": test.n,
            })
    return pd.DataFrame(out, columns=columns)


def wide_comparison(summary: pd.DataFrame, comparison: pd.DataFrame, baseline: str = "image") -> pd.DataFrame:
    """One row per method, one column pair per (way, shot): accuracy ± CI and the paired difference
    ("-" where the learner has no ``baseline`` result to pair with)."""
    out = []
    for (learner, fusion, modalities), group in summary.groupby(["learner", "fusion", "modalities"], sort=False):
        row = {"learner": learner, "method": modalities if fusion == "none" else f"{modalities} / {fusion}"}
        for _, r in group.sort_values(["n_way", "n_shot"]).iterrows():
            key = f"{r['n_way']}w{r['n_shot']}s"
            row[f"{key} accuracy"] = f"{r['accuracy']:.2f} ± {r['ci95']:.2f}"
            match = comparison[(comparison["learner"] == learner) & (comparison["fusion"] == fusion)
                               & (comparison["modalities"] == modalities) & (comparison["n_way"] == r["n_way"])
                               & (comparison["n_shot"] == r["n_shot"])]
            if not match.empty:
                row[f"{key} vs baseline"] = (f"{match['difference'].iloc[0]:+.2f} ± "
                                             f"{match['difference_ci95'].iloc[0]:.2f} (p={match['p_value'].iloc[0]:.1e})")
            else:
                row[f"{key} vs baseline"] = "(baseline)" if (modalities, fusion) == (baseline, "none") else "-"
        out.append(row)
    return pd.DataFrame(out)


def write_comparison(run_dirs: list[Path], out_dir: Path, baseline: str = "image") -> pd.DataFrame:
    """Write paired tests vs ``baseline`` into ``out_dir``: ``comparison.csv``/``.md`` (long) and
    ``comparison_wide.md`` (one row per method)."""
    rows = pd.concat([read_rows(Path(d) / "rows.jsonl") for d in run_dirs], ignore_index=True)
    table = compare_to_baseline(rows, baseline)
    if not table.empty:
        atomic_write_text(out_dir / "comparison.csv", table.to_csv(index=False))
        atomic_write_text(out_dir / "comparison.md", to_markdown(table))
        atomic_write_text(out_dir / "comparison_wide.md", to_markdown(wide_comparison(summarize(rows), table, baseline)))
    return table


def run_record(bench, status: str, wall_time_s: float) -> dict:
    """The provenance record ``run.json`` of a :class:`~benchmark.runner.Benchmark`: resolved config,
    seeds, data fingerprint, manifest hashes, per-method records, versions, device and timings."""
    import torch

    from benchmark.config import to_dict
    from benchmark.provenance import git_commit, package_versions, peak_memory_mb

    data = bench.dataset
    return {
        "run_id": bench.run_id, "status": status, "config": to_dict(bench.cfg), "seeds": bench.seeds,
        "setting": dataclasses.asdict(bench.setting),
        "dataset": {"name": bench.cfg.dataset, "fingerprint": data and data.fingerprint(),
                    "image_shape": data and list(data.image_shape)},
        "manifests": {f"{w}w{s}s": {"sha256": m.sha256, "path": str(p)}
                      for (w, s), (m, p) in bench.test_manifests.items()},
        "val_manifest_sha256": bench.val_manifest and bench.val_manifest.sha256,
        "methods": bench.method_records, "skipped": bench.skipped, "git_commit": git_commit(),
        "packages": package_versions(), "device": str(bench.device), "torch_threads": torch.get_num_threads(),
        "allocator": bench.allocator, "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "host": platform.node(), "platform": platform.platform(), "wall_time_s": round(wall_time_s, 2),
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
