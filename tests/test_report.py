"""`report` on a finished tiny run: the files, and the numbers behind each figure are the run's numbers;
`--seeds`; the metric registry; readable p-values."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.cli import main
from benchmark.metrics import METRICS, compute_metrics
from benchmark.tables import format_p
from benchmark.trainlog import read_train_log
from tests.test_cli import TINY

ROOT = Path(__file__).resolve().parents[1]
ARGS = TINY + ["--learners", "protonet", "--modalities", "image,image+text", "--fusions", "attention"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(ARGS + ["--out", str(out)]) == 0
    (folder,) = [d for d in out.iterdir() if d.name != "manifests"]
    return folder


@pytest.fixture(scope="module")
def report(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "new"
    assert main(["report", str(run), "--out", str(out), "--reproduced"]) == 0
    return out


def test_rows_and_run_json_carry_the_schema_version(run):
    rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines()]
    assert {r["schema_version"] for r in rows} == {2}
    assert {r["metric"] for r in rows} == {"accuracy", "nll", "ece"}
    assert json.loads((run / "run.json").read_text())["schema_version"] == 2
    summary = pd.read_csv(run / "summary.csv")
    for name in ("accuracy", "nll", "ece"):  # columns named after their metric
        assert {name, f"{name}_ci95"} <= set(summary.columns)
    assert summary["nll"].between(0, 5).all()  # not multiplied by 100


def test_report_writes_the_page_tables_and_figures(report):
    for name in ("index.html", "table.tex", "table.csv"):
        assert (report / name).stat().st_size > 0
    figures = sorted(p.name for p in report.glob("*.png"))
    assert {"shots.png", "fusion.png", "training.png", "reproduced.png"} <= set(figures)
    page = (report / "index.html").read_text()
    for figure in figures:
        assert f'src="{figure}"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # offline: nothing fetched from elsewhere
    tex = (report / "table.tex").read_text()
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule")) and r"$\pm$" in tex


def _by_method(table: pd.DataFrame, *extra: str) -> pd.DataFrame:
    return table.set_index(["learner", "modalities", "fusion", *extra]).sort_index()


def test_the_shots_figure_plots_the_summary(run, report):
    plotted = _by_method(pd.read_csv(report / "shots.csv"), "n_shot")
    summary = _by_method(pd.read_csv(run / "summary.csv"), "n_shot")
    assert len(plotted) == len(summary) == 4  # 2 methods x 2 shots
    np.testing.assert_allclose(plotted["mean"], summary.loc[plotted.index, "accuracy"])
    np.testing.assert_allclose(plotted["ci95"], summary.loc[plotted.index, "accuracy_ci95"])
    wide = pd.read_csv(report / "table.csv")
    row = wide[wide["fusion"] == "attention"].iloc[0]
    assert row["5w1s accuracy"] == pytest.approx(summary.loc[("protonet", "image+text", "attention", 1), "accuracy"])


def test_the_fusion_figure_plots_the_paired_comparison(run, report):
    plotted = _by_method(pd.read_csv(report / "fusion.csv"), "n_shot")
    comparison = _by_method(pd.read_csv(run / "comparison.csv"), "n_shot")
    assert len(plotted) == 2
    for column in ("difference", "difference_ci95", "p_value"):
        np.testing.assert_allclose(plotted[column], comparison.loc[plotted.index, column])


def test_the_training_figure_plots_the_training_log(run, report):
    plotted = pd.read_csv(report / "training.csv")
    for slug in ("protonet-image-none", "protonet-image+text-attention"):
        learner, modalities, fusion = slug.split("-")
        curve = plotted[(plotted["modalities"] == modalities) & (plotted["fusion"] == fusion)]
        logged = read_train_log(run / "train_log" / f"{slug}.csv")
        assert curve["step"].tolist() == logged["step"].tolist() == [1, 2, 3]
        np.testing.assert_allclose(curve["loss"], logged["loss"])
        np.testing.assert_allclose(curve["val_accuracy"].dropna(), logged["val_accuracy"].dropna())


def test_the_reproduced_figure_plots_results_reproduced_csv(report):
    plotted = pd.read_csv(report / "reproduced.csv").set_index("name")
    published = pd.read_csv(ROOT / "results" / "reproduced.csv").set_index("name")
    np.testing.assert_allclose(plotted["mean"], published.loc[plotted.index, "mean"])
    np.testing.assert_allclose(plotted["published_mean"], published.loc[plotted.index, "published_mean"])


def test_seeds_runs_each_seed_then_skips_finished_ones(tmp_path, capsys, caplog):
    args = TINY + ["--learners", "protonet", "--modalities", "image,image+text", "--fusions", "attention",
                   "--shots", "1", "--seeds", "0,1", "--out", str(tmp_path)]
    assert main(args) == 0
    runs = sorted(d.name for d in tmp_path.iterdir() if "-seed" in d.name and "-seeds" not in d.name)
    assert [r.split("-")[1] for r in runs] == ["seed0", "seed1"]
    (tables,) = [d for d in tmp_path.iterdir() if "-seeds0-1-" in d.name]
    seeds = pd.read_csv(tables / "over_seeds.csv")
    assert (seeds["n_seeds"] == 2).all()
    stamp = (tmp_path / runs[0] / "rows.jsonl").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(args) == 0  # everything finished: nothing is recomputed
    assert sum("finished in" in m and "skipped" in m for m in caplog.messages) == 2
    assert (tmp_path / runs[0] / "rows.jsonl").stat().st_mtime_ns == stamp
    assert main(args + ["--seed", "3"]) == 2 and "not both" in capsys.readouterr().err


def test_metrics_from_logits_and_labels():
    assert set(METRICS.names()) >= {"accuracy", "nll", "ece"}
    labels = torch.tensor([0, 1, 2, 0])
    sure = torch.nn.functional.one_hot(labels, 3).double() * 50  # right and certain: calibrated
    values = compute_metrics(sure, labels)
    assert values["accuracy"] == 1.0 and values["nll"] == pytest.approx(0, abs=1e-9)
    assert values["ece"] == pytest.approx(0, abs=1e-9)
    wrong = compute_metrics(torch.roll(sure, 1, dims=1), labels)  # wrong and certain: ECE 1
    assert wrong["accuracy"] == 0.0 and wrong["ece"] == pytest.approx(1.0) and wrong["nll"] > 10
    even = compute_metrics(torch.zeros(4, 3, dtype=torch.float64), labels)  # 1/3 confidence, 1/2 right
    assert even["ece"] == pytest.approx(abs(1 / 3 - 0.5)) and even["nll"] == pytest.approx(np.log(3))


def test_p_values_are_written_readably():
    assert format_p(1.91e-11) == "1.9e-11" and format_p(0.0421) == "0.042" and format_p(0.0) == "<1e-300"
    assert format_p(float("nan")) == "n/a"


def test_seed_lists_parse_or_name_the_bad_value():
    from benchmark.seeds import parse_seeds
    from tasks.errors import BenchmarkError

    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("3-5,1,3") == [3, 4, 5, 1]
    for bad in ("a", "", "-1", "1,,x"):
        with pytest.raises(BenchmarkError, match="--seeds"):
            parse_seeds(bad)
