"""Tables over several runs never mix them: settings, seeds and runs stay apart; keys are shown.

Three tiny runs (seconds each) into one output folder: A (the default setting), B (queries without
text: ``--query-modalities image``) and C (A's config with seed 1).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from tests.test_cli import TINY

ROOT = Path(__file__).resolve().parents[1]
BASE = TINY + ["--learners", "protonet", "--modalities", "image,image+text", "--fusions", "concat,attention",
               "--shots", "1"]


def _run(out: Path, extra: list[str]) -> Path:
    before = {d for d in out.iterdir()} if out.exists() else set()
    assert main(BASE + ["--out", str(out)] + extra) == 0
    (new,) = [d for d in out.iterdir() if d not in before and d.name != "manifests"]
    return new


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    return {"A": _run(out, []), "B": _run(out, ["--query-modalities", "image"]), "C": _run(out, ["--seed", "1"])}


def _table(capsys, *args: str) -> tuple[int, str]:
    code = main(["table", *args])
    return code, capsys.readouterr().err


def _md_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a markdown table as dicts (header -> cell)."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def _own(run: Path, learner: str, modalities: str, fusion: str) -> float:
    summary = pd.read_csv(run / "summary.csv")
    hit = summary[(summary["learner"] == learner) & (summary["modalities"] == modalities)
                  & (summary["fusion"] == fusion)]
    assert len(hit) == 1, hit
    return float(hit["accuracy"].iloc[0])


def test_image_only_rows_carry_the_setting_they_were_tested_in(runs):
    for name, query in (("A", "image+text"), ("B", "image")):
        rows = [json.loads(line) for line in (runs[name] / "rows.jsonl").read_text().splitlines()]
        settings = {(r["modalities"], r["fusion"]): r["setting"] for r in rows}
        assert settings[("image", "none")] == "support=image,query=image"
        assert settings[("image+text", "attention")] == f"support=image+text,query={query}"


def test_comparison_csv_carries_run_seed_and_manifest_keys(runs):
    comparison = pd.read_csv(runs["A"] / "comparison.csv")
    for key in ("run_id", "dataset", "setting", "seed", "n_way", "n_shot", "n_query", "manifest_sha256"):
        assert key in comparison.columns, key
    assert set(comparison["run_id"]) == {runs["A"].name}


def test_table_over_two_settings_keeps_each_run_apart(runs, tmp_path, capsys):
    out = tmp_path
    code, err = _table(capsys, str(runs["A"]), str(runs["B"]), "--out", str(out))
    assert code == 0, err
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison["run_id"]) == {runs["A"].name, runs["B"].name}
    for row in comparison.itertuples():  # every number is the one of its own run
        run = runs["A"] if row.run_id == runs["A"].name else runs["B"]
        assert row.accuracy == pytest.approx(_own(run, row.learner, row.modalities, row.fusion))
    assert len(comparison[comparison["fusion"] == "concat"]) == 1  # only run A has concat: still listed
    wide = _md_rows(out / "comparison_wide.md")
    assert "setting" in wide[0] and "run" in wide[0]  # the keys in which the inputs differ
    attention = [r for r in wide if r["method"] == "image+text / attention"]
    assert len(attention) == 2 and {r["setting"] for r in attention} == {
        "support=image+text,query=image+text", "support=image+text,query=image"}
    for r in attention:
        run = runs["A"] if r["run"] == runs["A"].name else runs["B"]
        assert float(r["5w1s accuracy"].split()[0]) == pytest.approx(_own(run, "protonet", "image+text", "attention"))
    assert any(r["method"] == "image+text / concat" for r in _md_rows(out / "comparison.md"))


def test_table_over_two_seeds_reports_each_seed_and_the_mean_over_seeds(runs, tmp_path, capsys):
    out = tmp_path
    code, err = _table(capsys, str(runs["A"]), str(runs["C"]), "--out", str(out))
    assert code == 0, err
    comparison = pd.read_csv(out / "comparison.csv", dtype={"seed": str})
    attention = comparison[comparison["fusion"] == "attention"].set_index("seed")
    assert set(attention.index) == {"0", "1", "all"}  # per seed, and combined
    per_seed = [attention.loc[s, "difference"] for s in ("0", "1")]
    assert attention.loc["all", "difference"] == pytest.approx(sum(per_seed) / 2, abs=0.011)
    assert attention.loc["0", "run_id"] == runs["A"].name and attention.loc["1", "run_id"] == runs["C"].name
    seeds = pd.read_csv(out / "over_seeds.csv")
    row = seeds[(seeds["fusion"] == "attention") & (seeds["metric"] == "accuracy")].iloc[0]
    own = [_own(runs[r], "protonet", "image+text", "attention") for r in ("A", "C")]
    assert row["mean"] == pytest.approx(sum(own) / 2, abs=0.011) and row["n_seeds"] == 2
    assert row["seed_ci95"] > 0 and row["episode_ci95"] > 0
    wide = _md_rows(out / "comparison_wide.md")
    fused = [r for r in wide if r["method"] == "image+text / attention"]
    assert len(fused) == 1 and fused[0]["seeds"] == "0,1"
    assert float(fused[0]["5w1s accuracy"].split()[0]) == pytest.approx(row["mean"])
    assert float(fused[0]["5w1s vs baseline"].split()[0]) == pytest.approx(attention.loc["all", "difference"])


def test_table_reads_a_run_folder_kept_with_gzipped_rows(runs, tmp_path, capsys):
    """Committed results keep rows as rows.jsonl.gz; `table` must read them as the plain file."""
    import gzip
    import shutil

    kept = tmp_path / "kept" / runs["C"].name
    kept.mkdir(parents=True)
    shutil.copy(runs["C"] / "run.json", kept / "run.json")
    (kept / "rows.jsonl.gz").write_bytes(gzip.compress((runs["C"] / "rows.jsonl").read_bytes()))
    for folders, out in (((runs["A"], runs["C"]), tmp_path / "plain"), ((runs["A"], kept), tmp_path / "gz")):
        code, err = _table(capsys, *map(str, folders), "--out", str(out))
        assert code == 0, err
    assert (tmp_path / "gz" / "over_seeds.csv").read_text() == (tmp_path / "plain" / "over_seeds.csv").read_text()
    assert (tmp_path / "gz" / "comparison_wide.md").read_text() == (tmp_path / "plain" / "comparison_wide.md").read_text()


def test_table_out_creates_its_folder(runs, tmp_path, capsys):
    out = tmp_path / "new" / "deeper"
    code, err = _table(capsys, str(runs["A"]), "--out", str(out))
    assert code == 0, err
    assert (out / "comparison.csv").exists() and (out / "comparison_wide.md").exists()


def test_table_over_several_runs_needs_an_out_folder(runs, capsys):
    code, err = _table(capsys, str(runs["A"]), str(runs["B"]))
    assert code == 2 and "--out" in err


def test_committed_previous_version_runs_still_load(tmp_path, capsys):
    runs = sorted((ROOT / "results" / "fusion_comparison").glob("shapes-seed0-*"))
    assert len(runs) == 2
    code, err = _table(capsys, *map(str, runs), "--out", str(tmp_path))
    assert code == 0, err
    comparison = pd.read_csv(tmp_path / "comparison.csv")
    assert {"protonet", "maml"} <= set(comparison["learner"])
    # previous-version rows carry the run's setting on image-only rows; the reader upgrades them
    from benchmark.tables import load_rows

    rows = load_rows(runs)
    image = rows[(rows["modalities"] == "image")]
    assert set(image["setting"]) == {"support=image,query=image"}
    assert set(rows["metric"]) == {"accuracy", "nll"} and (rows["schema_version"] == 1).all()


def test_table_compares_learners_with_a_named_baseline_on_the_same_episodes(tmp_path, capsys):
    run = _run(tmp_path / "runs", ["--learners", "protonet,matchingnet", "--modalities", "image"])
    out = tmp_path / "vs_protonet"
    code, err = _table(capsys, str(run), "--out", str(out), "--baseline", "protonet[image]")
    assert code == 0, err
    comparison = pd.read_csv(out / "comparison.csv")
    assert comparison[["learner", "baseline"]].values.tolist() == [["matchingnet", "protonet[image]"]]
    row = comparison.iloc[0]
    gap = _own(run, "matchingnet", "image", "none") - _own(run, "protonet", "image", "none")
    assert row["difference"] == pytest.approx(gap, abs=0.01) and row["n_episodes"] == 8
    wide = {r["learner"]: r for r in _md_rows(out / "comparison_wide.md")}
    assert wide["protonet"]["5w1s vs baseline"] == "(baseline)" and wide["matchingnet"]["5w1s vs baseline"] != "-"
    code, err = _table(capsys, str(run), "--out", str(tmp_path / "own"))  # each learner against itself: nothing
    assert code == 0 and not (tmp_path / "own" / "comparison.csv").exists()
    code, err = _table(capsys, str(run), "--out", str(out), "--baseline", "protonet[image")
    assert code == 2 and "protonet[image]" in err
