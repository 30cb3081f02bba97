"""Tables of a class-text study folder, regenerated from its ``rows.jsonl`` (or ``rows.jsonl.gz``)
and ``gates-*.jsonl``.

* ``summary.csv``/``.md``: mean accuracy and 95% CI per (method, shot) with all class text.
* ``comparison.csv``/``.md``: each method minus the baseline on the same episodes (paired t-test):
  difference, its 95% CI and the p-value, per shot.
* ``text_gain.csv``/``.md``: each class-text method minus its image-only control (the same fusion
  trained and tested without text) on the same episodes: what the text adds at an equal learned transform.
* ``missing_text.csv``/``.md``: accuracy per (method, shot, text fraction p), with the paired
  difference to the same method with all text; ``missing_text_curve.csv``/``.md``: the same accuracies,
  one column per p.
* ``gates.csv``: the tracked gate statistics and text/image separation per (method, shot, step, split);
  ``gates_overview.csv``/``.md``: the gate at the start, at the kept step and at the end.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchmark.results import atomic_write_bytes, atomic_write_text, read_rows, rows_file
from benchmark.tablewrite import to_markdown
from benchmark.stats import mean_ci95, paired_test


def _values(group: pd.DataFrame):
    return group.sort_values("episode")["value"].to_numpy()


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy ± 95% CI (percent) per (method, shot, text fraction)."""
    out = []
    for (method, shot, p), group in rows.groupby(["method", "n_shot", "text_fraction"], sort=False):
        mean, ci = mean_ci95(_values(group))
        out.append({"method": method, "n_way": int(group["n_way"].iloc[0]), "n_shot": int(shot),
                    "text_fraction": float(p), "accuracy": round(100 * mean, 2), "ci95": round(100 * ci, 2),
                    "n_episodes": len(group), "best_step": group["best_step"].iloc[0],
                    "manifest_sha256": group["manifest_sha256"].iloc[0]})
    return pd.DataFrame(out)


def paired(rows: pd.DataFrame, reference: pd.DataFrame) -> dict:
    """Paired comparison of two rows groups (same manifest, episode order)."""
    a, b = _values(rows), _values(reference)
    test = paired_test(a, b)
    return {"difference": round(100 * test.mean_difference, 2), "difference_ci95": round(100 * test.ci95, 2),
            "p_value": float(f"{test.p_value:.3g}"), "n_episodes": test.n}


def comparison_table(rows: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Every method (all class text) against ``baseline`` on the same test episodes."""
    full = rows[rows["text_fraction"] == 1.0]
    out = []
    for (shot, sha), group in full.groupby(["n_shot", "manifest_sha256"], sort=False):
        base = group[group["method"] == baseline]
        if base.empty:
            continue
        for method, m in group.groupby("method", sort=False):
            if method == baseline or len(m) != len(base):
                continue
            mean, ci = mean_ci95(_values(m))
            out.append({"method": method, "n_shot": int(shot), "accuracy": round(100 * mean, 2),
                        "ci95": round(100 * ci, 2), "baseline": baseline,
                        "baseline_accuracy": round(100 * float(_values(base).mean()), 2), **paired(m, base)})
    return pd.DataFrame(out)


def text_gain_table(rows: pd.DataFrame, controls: dict[str, str]) -> pd.DataFrame:
    """Every class-text method of ``controls`` (all class text) against its image-only control."""
    full = rows[rows["text_fraction"] == 1.0]
    out = []
    for (shot, sha), group in full.groupby(["n_shot", "manifest_sha256"], sort=False):
        for method, control in controls.items():
            m, c = group[group["method"] == method], group[group["method"] == control]
            if m.empty or c.empty or len(m) != len(c):
                continue
            out.append({"method": method, "n_shot": int(shot), "accuracy": round(100 * float(_values(m).mean()), 2),
                        "control": control, "control_accuracy": round(100 * float(_values(c).mean()), 2),
                        **paired(m, c)})
    return pd.DataFrame(out)


def missing_text_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per text fraction, and its paired difference to the same method with all text."""
    out = []
    for (method, shot), group in rows.groupby(["method", "n_shot"], sort=False):
        full = group[group["text_fraction"] == 1.0]
        if group["text_fraction"].nunique() < 2 or full.empty:
            continue
        for p, g in group.groupby("text_fraction", sort=False):
            mean, ci = mean_ci95(_values(g))
            row = {"method": method, "n_shot": int(shot), "text_fraction": float(p), "accuracy": round(100 * mean, 2),
                   "ci95": round(100 * ci, 2)}
            if p != 1.0:
                row.update({f"vs_all_text_{k}": v for k, v in paired(g, full).items() if k != "n_episodes"})
            out.append(row)
    return pd.DataFrame(out)


def missing_text_curve(missing: pd.DataFrame) -> pd.DataFrame:
    """The missing-text curve, wide: one row per (method, shot), one accuracy column per text fraction p."""
    if missing.empty:
        return missing
    wide = missing.pivot_table(index=["method", "n_shot"], columns="text_fraction", values="accuracy", sort=False)
    wide = wide[sorted(wide.columns, reverse=True)]
    wide.columns = [f"p={p:g}" for p in wide.columns]
    return wide.reset_index().sort_values("n_shot", kind="stable")


def gate_table(folder: Path) -> pd.DataFrame:
    """The tracked gates of every ``gates-<method>-<shot>shot.jsonl`` in ``folder`` (no per-class values)."""
    out = []
    for path in sorted(folder.glob("gates-*.jsonl")):
        method, shot = path.stem[len("gates-"):].rsplit("-", 1)
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            record.pop("gates", None)
            out.append({"method": method, "shot": shot, **record})
    return pd.DataFrame(out)


def gate_overview(gates: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Per (method, shot, split): the gate at the start, at the kept (best-validation) step and at the end,
    with the text-only and image-only separation at the kept step (the collapse measure)."""
    if gates.empty:
        return gates
    best = {(m, f"{s}shot"): b for m, s, b in rows[["method", "n_shot", "best_step"]].drop_duplicates().itertuples(
        index=False)}
    out = []
    for (method, shot, split), g in gates.groupby(["method", "shot", "split"], sort=False):
        g = g.sort_values("step")
        kept_step = best.get((method, shot), g["step"].iloc[-1])
        kept = g[g["step"] <= kept_step].iloc[-1]
        out.append({"method": method, "shot": shot, "split": split, "gate_start": round(g["gate_mean"].iloc[0], 4),
                    "kept_step": int(kept["step"]), "gate_kept": round(kept["gate_mean"], 4),
                    "gate_kept_min": round(kept["gate_min"], 4), "gate_kept_max": round(kept["gate_max"], 4),
                    "text_only_accuracy_kept": round(100 * kept["text_accuracy"], 2),
                    "image_only_accuracy_kept": round(100 * kept["image_accuracy"], 2),
                    "last_step": int(g["step"].iloc[-1]), "gate_last": round(g["gate_mean"].iloc[-1], 4)})
    return pd.DataFrame(out)


def study_rows(folder: Path) -> pd.DataFrame:
    """The per-episode rows of ``folder``: ``rows.jsonl``, else its compressed copy ``rows.jsonl.gz``
    (the one committed: the plain file of a full study is tens of MB)."""
    return read_rows(rows_file(folder))


def pack_rows(folder: Path) -> None:
    """Write ``rows.jsonl.gz``, a gzip copy of ``rows.jsonl`` (deterministic: no time stamp)."""
    import gzip

    data = (Path(folder) / "rows.jsonl").read_bytes()
    atomic_write_bytes(Path(folder) / "rows.jsonl.gz", gzip.compress(data, mtime=0))


def write_tables(folder: Path, baseline: str, controls: dict[str, str] | None = None) -> pd.DataFrame:
    """Regenerate every table of ``folder``; returns the comparison table.

    ``controls``: class-text method -> its image-only control, for ``text_gain``."""
    folder = Path(folder)
    rows = study_rows(folder)
    if rows.empty:
        return pd.DataFrame()
    tables = {"summary": summary_table(rows[rows["text_fraction"] == 1.0]),
              "comparison": comparison_table(rows, baseline), "text_gain": text_gain_table(rows, controls or {}),
              "missing_text": missing_text_table(rows),
              "gates": gate_table(folder)}
    tables["missing_text_curve"] = missing_text_curve(tables["missing_text"])
    tables["gates_overview"] = gate_overview(tables["gates"], rows)
    for name, table in tables.items():
        if table.empty:
            continue
        atomic_write_text(folder / f"{name}.csv", table.to_csv(index=False))
        if name != "gates":
            atomic_write_text(folder / f"{name}.md", to_markdown(table.drop(columns=["manifest_sha256"],
                                                                            errors="ignore")))
    return tables["comparison"]
