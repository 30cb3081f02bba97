"""Writing keyed tables: per-run summaries, the wide comparison table, Markdown and CSV.

Files written by :func:`write_tables` into the output folder (generated from ``rows.jsonl``, never
edited by hand):

* ``comparison.csv`` / ``.md``: paired differences to the baseline, per run (seed) and, for configs
  run over several seeds, combined (``seed = all``); every key column in the CSV;
* ``comparison_wide.csv`` / ``.md``: one row per method and setting, one column group per (way, shot);
* ``over_seeds.csv`` / ``.md`` (inputs with two or more seeds of one config): means over seeds.

Markdown tables show the key columns in which their inputs differ (run, dataset, setting, seeds,
queries); the CSV files always carry every key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.metrics import METRICS
from benchmark.results import atomic_write_text
from benchmark.tables import (COMBINED, KEYS, METHOD, compare, differing, format_p, is_baseline, load_rows,
                              method_label, over_seeds, scale, summarize)
from tasks.errors import BenchmarkError

SHOWN_KEYS = ["run", "dataset", "setting", "seeds", "n_query"]


@dataclass
class Tables:
    """Everything :func:`write_tables` computed (in the metric's display unit)."""

    summary: pd.DataFrame  # one row per run (seed), method, way, shot (summarize)
    seeds: pd.DataFrame  # means over seeds (over_seeds), one row per metric
    comparison: pd.DataFrame  # paired differences per seed and combined (compare)
    wide: pd.DataFrame  # numbers of the wide table (wide_numbers)
    metric: str
    baseline: str


def _digits(metric: str) -> int:
    return 2 if scale(metric) == 100 else 3


def wide_numbers(seeds: pd.DataFrame, comparison: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (config, dataset, setting, queries, method), columns ``<w>w<s>s <field>``: the mean over
    seeds, its per-episode and across-seed CIs, the paired difference to the baseline and its p-value."""
    seeds = seeds[seeds["metric"] == metric]
    lookup = {}
    for row in comparison.to_dict("records") if not comparison.empty else []:
        if row["seed"] == COMBINED or row["n_seeds"] == 1:
            key = (row["config"], row["dataset"], row["setting"], row["n_query"], row["learner"], row["fusion"],
                   row["modalities"], row["n_way"], row["n_shot"])
            if row["seed"] == COMBINED or key not in lookup:
                lookup[key] = row
    out = []
    ident = ["config", "dataset", "setting", "n_query"] + METHOD
    for key, group in seeds.groupby(ident, sort=False):
        row = dict(zip(ident, key))
        row.update(run=",".join(dict.fromkeys(",".join(group["runs"]).split(","))),
                   seeds=",".join(sorted(set(",".join(group["seeds"]).split(",")), key=int)),
                   method=method_label(row["modalities"], row["fusion"]))
        for r in group.sort_values(["n_way", "n_shot"]).to_dict("records"):
            ws = f"{r['n_way']}w{r['n_shot']}s"
            row.update({f"{ws} {metric}": r["mean"], f"{ws} {metric}_ci95": r["episode_ci95"],
                        f"{ws} {metric}_seed_ci95": r["seed_ci95"], f"{ws} n_seeds": r["n_seeds"]})
            paired = lookup.get(key + (r["n_way"], r["n_shot"]))
            if paired is not None and (paired["seed"] == COMBINED) == (r["n_seeds"] > 1):
                row.update({f"{ws} difference": paired["difference"],
                            f"{ws} difference_ci95": paired["difference_ci95"], f"{ws} p_value": paired["p_value"]})
        out.append(row)
    return pd.DataFrame(out)


def wide_text(numbers: pd.DataFrame, metric: str, baseline: str) -> pd.DataFrame:
    """The wide table as text cells (``81.28 ± 1.02``; over seeds ``81.28 ± 0.50 (seeds) ± 1.02
    (episodes)``), with only the key columns in which the rows differ."""
    if numbers.empty:
        return pd.DataFrame(columns=["learner", "method"])
    d = _digits(metric)
    cells = sorted({c.split(" ")[0] for c in numbers.columns if c.endswith(f" {metric}")},
                   key=lambda ws: tuple(int(x) for x in ws[:-1].split("w")))
    keys = differing(numbers, SHOWN_KEYS)
    if any(numbers.get(f"{ws} n_seeds", pd.Series(dtype=float)).max() > 1 for ws in cells) and "seeds" not in keys:
        keys.append("seeds")
    out = numbers[[k for k in SHOWN_KEYS if k in keys] + ["learner", "method"]].copy()
    for ws in cells:
        values = []
        for r in numbers.to_dict("records"):
            mean = r.get(f"{ws} {metric}")
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                values.append(("-", "-"))
                continue
            text = f"{mean:.{d}f} ± {r[f'{ws} {metric}_ci95']:.{d}f}"
            if r[f"{ws} n_seeds"] > 1:
                text = f"{mean:.{d}f} ± {r[f'{ws} {metric}_seed_ci95']:.{d}f} (seeds) ± {r[f'{ws} {metric}_ci95']:.{d}f} (episodes)"
            diff = r.get(f"{ws} difference")
            if diff is not None and not (isinstance(diff, float) and math.isnan(diff)):
                vs = f"{diff:+.{d}f} ± {r[f'{ws} difference_ci95']:.{d}f} (p={format_p(r[f'{ws} p_value'])})"
            else:
                vs = "(baseline)" if is_baseline(r, baseline) else "-"
            values.append((text, vs))
        out[f"{ws} {metric}"] = [v[0] for v in values]
        out[f"{ws} vs baseline"] = [v[1] for v in values]
    return out


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (no optional dependency needed); p-values written readably."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for row in table.to_dict("records"):
        lines.append("| " + " | ".join(format_p(row[c]) if c == "p_value" else _fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.1e}"
    return str(value)


def shown(table: pd.DataFrame, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    """``table`` without the key columns in which its rows agree (and without ``drop``)."""
    hidden = [k for k in KEYS + ["n_seeds", "baseline_setting"] if k in table.columns
              and k not in differing(table, [k]) and k not in ("n_way", "n_shot")]
    return table.drop(columns=[c for c in hidden + list(drop) if c in table.columns])


def write_summary(run_dir: Path, warn: bool = True) -> pd.DataFrame:
    """Regenerate ``summary.csv`` and ``summary.md`` of one run folder from its ``rows.jsonl`` (``warn``:
    say so when that file is damaged, see :func:`benchmark.tables.load_rows`)."""
    table = summarize(load_rows([run_dir], warn))
    atomic_write_text(run_dir / "summary.csv", table.to_csv(index=False))
    atomic_write_text(run_dir / "summary.md", to_markdown(shown(table, ("config", "manifest_sha256", "run_id"))))
    return table


def compute_tables(run_dirs: list[Path], baseline: str = "image", metric: str = "accuracy",
                   warn: bool = True) -> Tables:
    """Every table over ``run_dirs`` (see the module docstring), not written anywhere (``warn``: see
    :func:`benchmark.tables.load_rows`)."""
    rows = load_rows(run_dirs, warn)
    if rows.empty:
        raise BenchmarkError(f"no results yet in {', '.join(map(str, run_dirs))}: no method has finished")
    if metric not in set(rows["metric"]):
        raise BenchmarkError(f"metric {metric!r} is not in these runs; they have {sorted(set(rows['metric']))}")
    summary = summarize(rows)
    seeds = over_seeds(summary)
    comparison = compare(rows, baseline, metric)
    return Tables(summary, seeds, comparison, wide_numbers(seeds, comparison, metric), metric, baseline)


def write_tables(run_dirs: list[Path], out_dir: Path, baseline: str = "image", metric: str = "accuracy",
                 warn: bool = True) -> Tables:
    """Compute :func:`compute_tables` and write its files into ``out_dir`` (created if missing)."""
    tables = compute_tables(run_dirs, baseline, metric, warn)
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchmarkError(f"cannot create the output folder {out_dir}: {err.strerror or err}; "
                             "choose another --out") from None
    if not tables.comparison.empty:
        atomic_write_text(out_dir / "comparison.csv", tables.comparison.to_csv(index=False))
        long = tables.comparison.copy()
        long["manifest_sha256"] = [",".join(m[:12] for m in v.split(",")) for v in long["manifest_sha256"]]
        long.insert(1, "method", [method_label(m, f) for m, f in zip(long["modalities"], long["fusion"])])
        atomic_write_text(out_dir / "comparison.md", to_markdown(shown(long, ("config", "fusion", "modalities"))))
    atomic_write_text(out_dir / "comparison_wide.csv", tables.wide.to_csv(index=False))
    atomic_write_text(out_dir / "comparison_wide.md", to_markdown(wide_text(tables.wide, metric, baseline)))
    if not tables.seeds.empty and tables.seeds["n_seeds"].max() > 1:
        atomic_write_text(out_dir / "over_seeds.csv", tables.seeds.to_csv(index=False))
        atomic_write_text(out_dir / "over_seeds.md", to_markdown(shown(tables.seeds, ("config", "runs"))))
    return tables


def format_table(summary: pd.DataFrame, metric: str = "accuracy") -> str:
    """The one-screen summary printed at the end of a run."""
    if summary.empty:
        return "(no results)"
    d = _digits(metric)
    table = summary[["learner", "fusion", "modalities", "setting", "n_way", "n_shot"]].copy()
    unit = f" {METRICS.get(metric).unit}".rstrip() if metric in METRICS else ""
    table[f"{metric}{unit} (95% CI)"] = [f"{a:6.{d}f} ± {c:.{d}f}" for a, c in
                                         zip(summary[metric], summary[f"{metric}_ci95"])]
    return table.to_string(index=False)


