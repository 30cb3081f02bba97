"""``report RUN... --out DIR``: figures, an offline HTML page, LaTeX and CSV tables from run folders.

Writes into ``DIR`` (created if missing): ``index.html`` (open it in any browser, offline),
``table.tex`` (booktabs) and ``table.csv`` of the wide table, the figures ``shots.png``,
``fusion.png``, ``training.png`` (and ``reproduced.png`` with ``--reproduced``), each with the
numbers it plots in ``<figure>.csv``, and the tables of :mod:`benchmark.tablewrite`.
Everything is generated from ``rows.jsonl``, ``run.json`` and the training logs of the runs.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path

import pandas as pd

from benchmark.report.figures import plot_fusion, plot_reproduced, plot_shots, plot_training, series_labels
from benchmark.report.page import Section, booktabs, render_html
from benchmark.results import atomic_write_text
from benchmark.tables import read_run_record
from benchmark.tablewrite import Tables, format_p, shown, to_markdown, wide_text, write_tables
from benchmark.trainlog import read_train_log
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)

REPRODUCED = Path(__file__).resolve().parents[2] / "results" / "reproduced.csv"


def training_curves(run_dirs: list[Path]) -> pd.DataFrame:
    """Per-step training loss and validation accuracy of every method of the runs: from the training
    log (``train_log/<slug>.csv``) where the run has one, else the validation points in ``run.json``
    (runs written before the training log existed). A method still training shows its log so far."""
    frames = []
    for run_dir in map(Path, run_dirs):
        methods = dict(read_run_record(run_dir).get("methods", {}))
        methods.update({p.stem: {} for p in sorted((run_dir / "train_log").glob("*.csv")) if p.stem not in methods})
        for slug, method in methods.items():
            learner, modalities, fusion = slug.rsplit("-", 2)
            path = run_dir / "train_log" / f"{slug}.csv"
            if path.exists():
                curve, source = read_train_log(path), "train_log"
            else:
                curve, source = pd.DataFrame(method.get("val", []), columns=["step", "loss", "val_accuracy"]), "run.json"
            if curve.empty:
                continue
            curve = curve.assign(run=run_dir.name, learner=learner, modalities=modalities, fusion=fusion,
                                 source=source)
            curve["loss_smoothed"] = curve["loss"].rolling(10 if source == "train_log" else 1, min_periods=1).mean()
            frames.append(curve)
    if not frames:
        return pd.DataFrame()
    curves = pd.concat(frames, ignore_index=True)
    curves.insert(0, "label", series_labels(curves).to_numpy())
    return curves


def reproduced_table(path: Path = REPRODUCED) -> pd.DataFrame:
    """``results/reproduced.csv`` (published against reproduced numbers)."""
    if not path.exists():
        raise BenchmarkError(f"--reproduced: {path} does not exist; run `python run_benchmark.py reproduce NAME` first")
    return pd.read_csv(path)


def _sections(tables: Tables, figures: dict[str, Path | None], reproduced: pd.DataFrame | None) -> list[Section]:
    """The page: one section per figure, with the tables it comes from."""
    metric, baseline = tables.metric, tables.baseline
    wide = wide_text(tables.wide, metric, baseline)
    sections = [Section(
        "Results", f"Mean {html.escape(metric)} ± 95% confidence interval over test episodes (over seeds "
        "where a config ran with several), and the paired difference to the same learner's "
        f"<code>{html.escape(baseline)}</code> result on the same episodes.", tables=[("Wide table", wide)])]
    if figures.get("shots"):
        sections.append(Section(f"{metric.capitalize()} against shots",
                                "One line per method, error bars: 95% CI over episodes (over seeds where several).",
                                "shots.png", "shots.csv"))
    if figures.get("fusion"):
        long = tables.comparison.copy()
        long["p_value"] = long["p_value"].map(format_p)
        cols = [c for c in ["learner", "modalities", "fusion", "setting", "run_id", "seed", "n_way", "n_shot", metric,
                            f"{metric}_ci95", f"baseline_{metric}", "difference", "difference_ci95", "p_value",
                            "n_episodes"] if c in shown(long).columns]
        sections.append(Section(f"Paired differences to {baseline}",
                                "Method minus its learner's baseline, episode by episode on one manifest "
                                "(per seed; <code>seed = all</code>: mean over seeds with the across-seed CI).",
                                "fusion.png", "fusion.csv", [("Every paired comparison", long[cols].round(2))], folded=True))
    if figures.get("training"):
        sections.append(Section("Training and validation curves",
                                "Training loss (faint: every step; line: 10-step mean) and validation accuracy at "
                                "the validation points. Runs written before the training log existed have only the "
                                "validation points recorded in run.json (shown as dots).",
                                "training.png", "training.csv"))
    if reproduced is not None and figures.get("reproduced"):
        cols = ["name", "label", "published_mean", "published_ci95", "mean", "ci95", "test_episodes", "training"]
        sections.append(Section("Published vs ours", "From <code>results/reproduced.csv</code>.",
                                "reproduced.png", "reproduced.csv", [("Reproductions", reproduced[cols].fillna("-"))]))
    return sections


def build_report(run_dirs: list[Path], out_dir: Path, baseline: str = "image", metric: str = "accuracy",
                 reproduced: bool = False) -> list[Path]:
    """Write the report of ``run_dirs`` into ``out_dir`` (see the module docstring); returns the figures."""
    out_dir = Path(out_dir)
    tables = write_tables(run_dirs, out_dir, baseline, metric)
    ours = reproduced_table() if reproduced else None
    figures = {"shots": plot_shots(tables.seeds, metric, out_dir),
               "fusion": plot_fusion(tables.comparison, metric, baseline, out_dir),
               "training": plot_training(training_curves(run_dirs), out_dir),
               "reproduced": plot_reproduced(ours, out_dir) if ours is not None else None}
    for name, path in figures.items():
        if path is None and (name != "reproduced" or reproduced):
            log.warning("report: no data for the %s figure", name)
    wide = wide_text(tables.wide, metric, baseline)
    atomic_write_text(out_dir / "table.csv", tables.wide.to_csv(index=False))
    caption = (f"{metric} (mean ± 95% CI) and paired difference to the {baseline} baseline; runs: "
               + ", ".join(Path(d).name for d in run_dirs))
    atomic_write_text(out_dir / "table.tex", booktabs(wide, caption))
    atomic_write_text(out_dir / "table.md", to_markdown(wide))
    records = [read_run_record(d) for d in run_dirs]
    meta = " · ".join(html.escape(f"{Path(d).name} ({r.get('status', '?')}, commit {str(r.get('git_commit'))[:10]})")
                      for d, r in zip(run_dirs, records))
    files = sorted(p.name for p in out_dir.iterdir() if p.suffix in (".csv", ".md", ".tex", ".png"))
    page = render_html("Benchmark report", meta, _sections(tables, figures, ours), files)
    atomic_write_text(out_dir / "index.html", page)
    return [p for p in figures.values() if p is not None]
