"""Keyed result tables: summaries per run and seed, means over seeds, paired comparisons.

Every result is keyed by :data:`KEYS` (run, its seed-free config, dataset, the setting its method was
tested in, seed, way, shot, queries, manifest) and the method (:data:`METHOD`). Tables group by all
keys, so inputs that differ in a key are never merged; the only aggregation across runs is the mean
over seeds of one config (:func:`over_seeds`), which says so. Paired comparisons pair a method with
its learner's baseline within one run and one manifest, episode by episode.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.metrics import METRICS, SCHEMA_VERSION
from benchmark.stats import mean_ci95, paired_test
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)

KEYS = ["run_id", "config", "dataset", "setting", "seed", "n_way", "n_shot", "n_query", "manifest_sha256"]
METHOD = ["learner", "fusion", "modalities"]
SEED_GROUP = ["config", "dataset", "setting", "n_way", "n_shot", "n_query"]  # KEYS less run, seed, manifest
COMBINED = "all"  # the seed value of a row combined over seeds


def method_setting(support: tuple[str, ...], query: tuple[str, ...], modalities: tuple[str, ...]) -> str:
    """The setting a method was tested in: each side's modalities that the method uses.

    An image-only method in ``support=image+text,query=image`` sees ``support=image,query=image``.
    """
    side = {name: [m for m in shown if m in modalities] or list(shown) for name, shown in
            (("support", support), ("query", query))}
    return f"support={'+'.join(side['support'])},query={'+'.join(side['query'])}"


def config_key(config: dict) -> str:
    """Hash of what determines the numbers except the seed: runs of one config over seeds share it."""
    data = {k: v for k, v in config.items() if k not in ("seed", "out", "device", "threads", "protocol", "note", "choices")}
    data["train"] = {k: v for k, v in data.get("train", {}).items() if k != "checkpoint_every"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]


def read_run_record(run_dir: Path) -> dict:
    """``run.json`` of a run folder (``{}`` when it has none); any schema version."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BenchmarkError(f"cannot read {path}: {err}; it is regenerated when the run is resumed") from None


def upgrade_rows(rows: pd.DataFrame, record: dict) -> pd.DataFrame:
    """Rows of any schema version in the current form (version 1: rows without ``schema_version``)."""
    rows = rows.copy()
    if "schema_version" not in rows.columns:
        rows["schema_version"] = 1
    rows["schema_version"] = rows["schema_version"].fillna(1).astype(int)
    old = rows["schema_version"] < 2
    if old.any():  # v1: the run's setting on every method, negative log-likelihood named "loss"
        rows.loc[old & (rows["metric"] == "loss"), "metric"] = "nll"
        for (setting, modalities), index in rows[old].groupby(["setting", "modalities"]).groups.items():
            sides = {name: tuple(shown.split("+")) for name, shown in (p.split("=") for p in setting.split(","))}
            rows.loc[index, "setting"] = method_setting(sides["support"], sides["query"], tuple(modalities.split("+")))
    rows["config"] = config_key(record["config"]) if "config" in record else rows["run_id"]
    rows["seed"] = rows["seed"].astype(int)
    return rows


def require_rows(run_dir: Path) -> Path:
    """The rows file of ``run_dir`` (:func:`benchmark.results.rows_file`).

    Raises:
        BenchmarkError: the folder holds no ``rows.jsonl`` (nor ``rows.jsonl.gz``).
    """
    from benchmark.results import rows_file

    if not rows_file(run_dir).exists():
        raise BenchmarkError(f"{run_dir} holds no rows.jsonl (nor rows.jsonl.gz): give run folders written by "
                             "`run_benchmark.py run`")
    return rows_file(run_dir)


def load_rows(run_dirs: list[Path], warn: bool = True) -> pd.DataFrame:
    """The rows of several run folders, upgraded to the current schema and keyed by :data:`KEYS`; with
    ``warn``, a warning for each folder whose rows file is damaged or incomplete (:mod:`benchmark.rowcheck`).

    Raises:
        BenchmarkError: a folder without ``rows.jsonl`` (or ``rows.jsonl.gz``), or one run given twice.
    """
    from benchmark.rowcheck import check_rows

    frames, seen = [], {}
    for run_dir in map(Path, run_dirs):
        check = check_rows(run_dir, require_rows(run_dir))
        if warn and not check.ok:
            log.warning("WARNING: %s. Numbers from this run are partial; rerun it (the same `run_benchmark.py run` "
                        "command) to recompute what is missing", check.describe())
        rows = pd.DataFrame(check.records)
        if rows.empty:
            continue
        for run_id in rows["run_id"].unique():
            if run_id in seen:
                raise BenchmarkError(f"run {run_id} is given twice ({seen[run_id]} and {run_dir}); give each run once")
            seen[run_id] = run_dir
        frames.append(upgrade_rows(rows, read_run_record(run_dir)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=KEYS + METHOD)


def scale(metric: str) -> float:
    """How a metric is shown: accuracy and ECE in percent, NLL as is (unregistered metrics: as is)."""
    return METRICS.get(metric).scale if metric in METRICS else 1.0


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% CI over episodes per keys, method and metric: columns ``<metric>``, ``<metric>_ci95``."""
    out = []
    if rows.empty:
        return pd.DataFrame(columns=METHOD + KEYS + ["n_episodes"])
    for key, group in rows.groupby(METHOD + KEYS, sort=False, dropna=False):
        row = dict(zip(METHOD + KEYS, key))
        for name, values in group.groupby("metric", sort=False)["value"]:
            mean, ci = mean_ci95(values.to_numpy())
            digits = 2 if scale(name) == 100 else 4  # percentages to 0.01 points, as published tables
            row.update({name: round(scale(name) * mean, digits), f"{name}_ci95": round(scale(name) * ci, digits)})
            row["n_episodes"] = len(values)
        out.append(row)
    table = pd.DataFrame(out)
    metrics = [c for c in table.columns if c not in METHOD + KEYS + ["n_episodes"]]
    return table[METHOD + KEYS[2:8] + ["n_episodes"] + metrics + ["run_id", "config", "manifest_sha256"]]


def over_seeds(summary: pd.DataFrame) -> pd.DataFrame:
    """Per config and method: the mean over seeds, the across-seed 95% CI (t over seeds) and the mean
    per-episode 95% CI of the seeds; one row per metric."""
    metrics = [c for c in summary.columns if f"{c}_ci95" in summary.columns]
    out = []
    for key, group in summary.groupby(METHOD + SEED_GROUP, sort=False):
        for name in metrics:
            seeds = group.dropna(subset=[name])
            if seeds.empty:
                continue
            mean, ci = mean_ci95(seeds[name].to_numpy())
            out.append({**dict(zip(METHOD + SEED_GROUP, key)), "metric": name, "mean": round(mean, 4),
                        "seed_ci95": round(ci, 4), "episode_ci95": round(float(seeds[f"{name}_ci95"].mean()), 4),
                        "n_seeds": len(seeds), "seeds": ",".join(map(str, sorted(seeds["seed"]))),
                        "runs": ",".join(seeds.sort_values("seed")["run_id"])})
    return pd.DataFrame(out)


def parse_baseline(baseline: str) -> tuple[str | None, str]:
    """What a comparison pairs with: ``"image"`` -> ``(None, "image")``, each learner against its own
    image-only result; ``"protonet[image]"`` -> ``("protonet", "image")``, every method of a run against
    ProtoNet on images (learners compared with each other on the same episodes)."""
    match = re.fullmatch(r"\s*(?:([\w.-]+)\[([\w+]+)\]|([\w+]+))\s*", baseline)
    if not match:
        raise BenchmarkError(f"--baseline {baseline!r}: give a modality setting (image) or a learner and its "
                             "setting (protonet[image])")
    return (match[1], match[2]) if match[1] else (None, match[3])


def is_baseline(row: dict, baseline: str) -> bool:
    """Whether ``row`` (with ``learner``, ``modalities``, ``fusion``) is the method ``baseline`` names."""
    learner, modalities = parse_baseline(baseline)
    return (row["modalities"], row["fusion"]) == (modalities, "none") and learner in (None, row["learner"])


def compare(rows: pd.DataFrame, baseline: str = "image", metric: str = "accuracy") -> pd.DataFrame:
    """Paired tests of every method against its baseline, per run and manifest, episode by episode: its
    learner's ``baseline`` setting (``fusion == none``), or with ``baseline="protonet[image]"`` that one
    method of the run (see :func:`parse_baseline`); plus, for configs run over several seeds, one row per
    method with ``seed == "all"``: the mean over seeds of the value and of the difference, their
    across-seed 95% CI and a t-test of the per-seed differences. Values in the metric's display unit."""
    base_learner, modalities = parse_baseline(baseline)
    k = scale(metric)
    rows = rows[rows["metric"] == metric]
    within = ["run_id", "manifest_sha256"] + ([] if base_learner else ["learner"])
    out = []
    for _, group in rows.groupby(within, sort=False):
        base = group[(group["modalities"] == modalities) & (group["fusion"] == "none")
                     & (group["learner"] == (base_learner or group["learner"].iloc[0]))]
        if base.empty:
            continue
        base_values = base.set_index("episode")["value"].sort_index()
        label = f"{base['learner'].iloc[0]}[{modalities}]"
        for _, method in group.groupby(METHOD, sort=False):
            first = method.iloc[0]
            if is_baseline(first, baseline) and first["learner"] == base["learner"].iloc[0]:
                continue
            values = method.set_index("episode")["value"].sort_index()
            if not values.index.equals(base_values.index):
                log.warning("%s %s[%s]: episodes differ from the baseline's on manifest %s; not paired",
                            first["run_id"], first["learner"], first["modalities"], first["manifest_sha256"][:12])
                continue
            test = paired_test(values.to_numpy(), base_values.to_numpy())
            mean, ci = mean_ci95(values.to_numpy())
            out.append({**{c: first[c] for c in METHOD + KEYS}, "seed": str(first["seed"]),
                        metric: round(k * mean, 4), f"{metric}_ci95": round(k * ci, 4),
                        "baseline": label, "baseline_setting": base["setting"].iloc[0],
                        f"baseline_{metric}": round(k * float(base_values.mean()), 4),
                        "difference": round(k * test.mean_difference, 4), "difference_ci95": round(k * test.ci95, 4),
                        "p_value": test.p_value, "n_episodes": test.n, "n_seeds": 1})
    table = pd.DataFrame(out)
    return pd.concat([table, _combine_seeds(table, metric)], ignore_index=True) if out else table


def _combine_seeds(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The ``seed == "all"`` rows of :func:`compare` for configs with two or more seeds."""
    from scipy import stats

    out = []
    for _, group in table.groupby(METHOD + SEED_GROUP, sort=False):
        if len(group) < 2:
            continue
        group = group.sort_values("seed")
        mean, ci = mean_ci95(group[metric].to_numpy())
        diff, diff_ci = mean_ci95(group["difference"].to_numpy())
        p = float(stats.ttest_1samp(group["difference"], 0.0).pvalue) if group["difference"].std() > 0 else (
            0.0 if diff else 1.0)
        out.append({**group.iloc[0].to_dict(), "run_id": ",".join(group["run_id"]), "seed": COMBINED,
                    "manifest_sha256": ",".join(group["manifest_sha256"]), metric: round(mean, 4),
                    f"{metric}_ci95": round(ci, 4), f"baseline_{metric}": round(group[f"baseline_{metric}"].mean(), 4),
                    "difference": round(diff, 4), "difference_ci95": round(diff_ci, 4), "p_value": p,
                    "n_episodes": int(group["n_episodes"].sum()), "n_seeds": len(group)})
    return pd.DataFrame(out)


def format_p(p: float) -> str:
    """A readable p-value: ``0.042``, ``1.9e-11``, ``<1e-300`` (``n/a`` when undefined)."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    if p == 0:
        return "<1e-300"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def differing(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """The columns of ``keys`` in which the rows of ``table`` differ (those a reader must see)."""
    return [k for k in keys if k in table.columns and table[k].astype(str).nunique() > 1]


def method_label(modalities: str, fusion: str) -> str:
    """``image``, ``text`` or ``image+text / attention``."""
    return modalities if fusion == "none" else f"{modalities} / {fusion}"
