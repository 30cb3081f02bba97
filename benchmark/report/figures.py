"""The report's figures. Each function draws one PNG and writes the plotted numbers beside it
(``<name>.csv``, one row per plotted point), so that a reader (and the tests) can check a figure against
the run's tables without reading pixels. matplotlib is imported inside the functions (Agg backend)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmark.metrics import METRICS
from benchmark.results import atomic_write_text
from benchmark.tables import COMBINED, method_label


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    """A matplotlib figure (Agg canvas, no pyplot state) and its axes (a flat list, row by row)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, list(fig.subplots(nrows, ncols, squeeze=False).ravel())


def _save(fig, data: pd.DataFrame, out_dir: Path, name: str) -> Path:
    png = out_dir / f"{name}.png"
    fig.savefig(png, dpi=110)
    atomic_write_text(out_dir / f"{name}.csv", data.to_csv(index=False))
    return png


def series_labels(table: pd.DataFrame) -> pd.Series:
    """A legend label per row: learner and method, plus, only where that leaves two series with one
    label, the key that tells them apart (setting, dataset, queries, then run)."""
    methods = [method_label(m, f) for m, f in zip(table["modalities"], table["fusion"])]
    labels = pd.Series([f"{a} {b}" for a, b in zip(table["learner"], methods)], index=table.index)
    for key in ("setting", "dataset", "n_query", "run"):
        if key not in table.columns or table.empty:
            continue
        ambiguous = table.groupby(labels.to_numpy())[key].transform("nunique").to_numpy() > 1
        values = table[key].astype(str).map(_short_runs) if key == "run" else table[key].astype(str)
        labels[ambiguous] = labels[ambiguous] + " [" + values[ambiguous] + "]"
    return labels


def _short_runs(runs: str) -> str:
    """``a,b,c`` (one config over seeds) -> ``a +2 seeds``."""
    first, *rest = runs.split(",")
    return f"{first} +{len(rest)} seed{'s' if len(rest) > 1 else ''}" if rest else first


def _metric_label(metric: str) -> str:
    return METRICS.get(metric).label if metric in METRICS else metric


def plot_shots(seeds: pd.DataFrame, metric: str, out_dir: Path) -> Path | None:
    """``metric`` against shots, one line per method and one panel per way; error bars: the 95% CI
    over episodes (one seed) or over seeds (several seeds)."""
    data = seeds[seeds["metric"] == metric].copy()
    if data.empty:
        return None
    data["run"] = data["runs"]
    data["label"] = series_labels(data).to_numpy()
    data["ci95"] = [s if n > 1 else e for s, e, n in zip(data["seed_ci95"], data["episode_ci95"], data["n_seeds"])]
    data["ci_over"] = ["seeds" if n > 1 else "episodes" for n in data["n_seeds"]]
    panels = sorted({(w, learner) for w, learner in zip(data["n_way"], data["learner"])})
    fig, axes = _figure(4.6 * len(panels), 3.4 + 0.22 * data.groupby(["n_way", "learner"])["label"].nunique().max(),
                        len(panels))
    for ax, (way, learner) in zip(axes, panels):
        for label, line in data[(data["n_way"] == way) & (data["learner"] == learner)].groupby("label", sort=False):
            line = line.sort_values("n_shot")
            ax.errorbar(line["n_shot"], line["mean"], yerr=line["ci95"], marker="o", capsize=3, label=label)
        ax.set(title=f"{learner}, {way}-way", xlabel="shots", ylabel=_metric_label(metric))
        ax.set_xticks(sorted(data["n_shot"].unique()))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, frameon=False)
    columns = ["label", "learner", "fusion", "modalities", "setting", "run", "n_way", "n_shot", "mean", "ci95",
               "ci_over", "n_seeds"]
    return _save(fig, data[columns], out_dir, "shots")


def plot_fusion(comparison: pd.DataFrame, metric: str, baseline: str, out_dir: Path) -> Path | None:
    """Paired differences to each learner's ``baseline`` with their 95% CIs, one panel per (way, shot);
    over several seeds the combined difference and its across-seed CI."""
    from matplotlib.ticker import MaxNLocator

    if comparison.empty:
        return None
    multi = comparison[comparison["seed"] == COMBINED]
    keys = ["config", "learner", "fusion", "modalities", "setting", "n_way", "n_shot", "n_query"]
    single = comparison[(comparison["seed"] != COMBINED)
                        & ~comparison.set_index(keys).index.isin(multi.set_index(keys).index)]
    data = pd.concat([single, multi], ignore_index=True)
    data["run"] = data["run_id"]
    data["label"] = series_labels(data).to_numpy()
    cells = sorted({(w, s) for w, s in zip(data["n_way"], data["n_shot"])})
    width = 3.4 * len(cells) + 0.075 * max(len(label) for label in data["label"])
    fig, axes = _figure(width, 0.4 * data["label"].nunique() + 1.6, len(cells))
    for i, (ax, (way, shot)) in enumerate(zip(axes, cells)):
        cell = data[(data["n_way"] == way) & (data["n_shot"] == shot)].iloc[::-1]
        ax.errorbar(cell["difference"], range(len(cell)), xerr=cell["difference_ci95"], fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(range(len(cell)), cell["label"] if i == 0 else [""] * len(cell), fontsize=8)
        ax.set_title(f"{way}-way {shot}-shot")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.grid(axis="x", alpha=0.3)
    against = baseline if "[" in baseline else f"the same learner's {baseline} result"
    fig.supxlabel(f"paired difference to {against} ({_unit(metric)}), 95% CI")
    columns = ["label", "learner", "fusion", "modalities", "setting", "run", "seed", "n_way", "n_shot", metric,
               f"baseline_{metric}", "difference", "difference_ci95", "p_value", "n_seeds"]
    return _save(fig, data[columns], out_dir, "fusion")


def _unit(metric: str) -> str:
    unit = METRICS.get(metric).unit if metric in METRICS else ""
    return f"{metric}, {'points' if unit == '%' else unit}".rstrip(", ")


def plot_training(curves: pd.DataFrame, out_dir: Path) -> Path | None:
    """Training loss per step (a 10-step moving average over the raw loss) and validation accuracy."""
    if curves.empty:
        return None
    from matplotlib.ticker import MaxNLocator

    learners = list(dict.fromkeys(curves["learner"]))
    most = curves.groupby("learner")["label"].nunique().max()
    fig, axes = _figure(5.2 * len(learners), 6.4 + 0.22 * most, len(learners), 2)
    for col, learner in enumerate(learners):
        loss_ax, val_ax = axes[col], axes[len(learners) + col]
        for label, curve in curves[curves["learner"] == learner].groupby("label", sort=False):
            steps = curve.dropna(subset=["loss"])
            few = steps["source"].eq("run.json").all()  # validation points only: mark them
            line = loss_ax.plot(steps["step"], steps["loss_smoothed"], lw=1.2, marker="o" if few else None, ms=3)[0]
            if not few:
                loss_ax.plot(steps["step"], steps["loss"], lw=0.5, alpha=0.25, color=line.get_color())
            val = curve.dropna(subset=["val_accuracy"])
            val_ax.plot(val["step"], 100 * val["val_accuracy"], marker="o", ms=3, color=line.get_color(), label=label)
        loss_ax.set(title=f"{learner}: training loss", xlabel="step", ylabel="loss")
        if (curves.loc[curves["learner"] == learner, "loss"].dropna() > 0).all():
            loss_ax.set_yscale("log")  # early losses can be many times the later ones
        val_ax.set(title=f"{learner}: validation accuracy", xlabel="step", ylabel="accuracy (%)")
        for ax in (loss_ax, val_ax):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        val_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8, frameon=False)
    return _save(fig, curves, out_dir, "training")


def plot_reproduced(table: pd.DataFrame, out_dir: Path) -> Path | None:
    """Published against reproduced accuracy per protocol (``results/reproduced.csv``), with 95% CIs."""
    if table.empty:
        return None
    data = table[["name", "label", "published_mean", "published_ci95", "mean", "ci95", "test_episodes"]].copy()
    fig, (ax,) = _figure(8.0, 0.6 * len(data) + 1.4)
    y = list(range(len(data)))
    published_ci = [0 if (c is None or (isinstance(c, float) and math.isnan(c))) else c for c in data["published_ci95"]]
    ax.errorbar(data["published_mean"], [v + 0.12 for v in y], xerr=published_ci, fmt="s", capsize=3,
                label="published")
    ax.errorbar(data["mean"], [v - 0.12 for v in y], xerr=data["ci95"], fmt="o", capsize=3, label="ours")
    ax.set_yticks(y, data["name"], fontsize=8)
    ax.set(xlabel="accuracy (%)", title="published vs ours (95% CI; published CI where the paper gives one)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, data, out_dir, "reproduced")
