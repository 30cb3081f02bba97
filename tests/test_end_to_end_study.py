"""Gates and missing class text of learners trained end to end, from a run's saved models
(benchmark/studies/end_to_end.py), on a tiny run of the built-in dataset."""
from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from benchmark.cli import main as cli
from benchmark.studies import end_to_end
from tests.conftest import TINY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    assert cli([*TINY, "--learners", "protonet,am3,classfusion", "--modalities", "image", "--shots", "1,2",
                "--out", str(out)]) == 0
    (run,) = [d for d in out.iterdir() if d.name != "manifests"]
    return run


def test_end_to_end_gates_and_missing_text_come_from_the_runs_own_models_and_episodes(run_dir, tmp_path):
    out = tmp_path / "analysis"
    assert end_to_end.main(["--run", str(run_dir), "--data-root", "", "--out", str(out),
                            "--text-fractions", "1,0.5,0"]) == 0
    result = json.loads((out / "end_to_end.json").read_text())
    assert set(result["models"]) == {"am3-image-none", "classfusion-image-none"}  # ProtoNet reads no class text
    am3 = result["models"]["am3-image-none"]
    assert [g["split"] for g in am3["gates"]] == ["train", "val", "test"]
    for g in am3["gates"]:
        assert len(g["gates"]) == g["classes"] and 0 <= g["gate_min"] <= g["gate_mean"] <= g["gate_max"] <= 1
        assert g["image_feature_norm"] > 0 and g["text_prototype_norm"] > 0
    missing = pd.read_csv(out / "missing_text.csv")
    assert set(missing["n_shot"]) == {1, 2} and set(missing["text_fraction"]) == {1.0, 0.5, 0.0}
    full = missing[missing["text_fraction"] == 1.0]
    # with all class text the accuracy is the run's own: the same models on the same episodes
    assert full["accuracy"].to_numpy() == pytest.approx(full["run_accuracy"].to_numpy(), abs=0.01)
    assert missing[missing["text_fraction"] < 1]["p_value"].between(0, 1).all()
    protonet = pd.read_csv(run_dir / "summary.csv").query("learner == 'protonet'").set_index("n_shot")["accuracy"]
    gap = full["run_accuracy"].to_numpy() - protonet.loc[full["n_shot"]].to_numpy()
    assert full["vs_protonet"].to_numpy() == pytest.approx(gap, abs=0.02)  # paired on the run's own episodes
    (out / "missing_text.csv").unlink()
    assert end_to_end.main(["--tables-only", "--out", str(out)]) == 0  # the tables come back from the JSON
    pd.testing.assert_frame_equal(pd.read_csv(out / "missing_text.csv"), missing)


def test_end_to_end_errors_name_the_folder(tmp_path, capsys):
    assert end_to_end.main(["--run", str(tmp_path), "--data-root", "", "--out", str(tmp_path / "o")]) == 2
    assert "holds no run.json and rows.jsonl" in capsys.readouterr().err
    assert end_to_end.main(["--run", str(tmp_path), "--data-root", "", "--text-fractions", "1,2"]) == 2
    assert "expected numbers in [0, 1]" in capsys.readouterr().err
    assert end_to_end.main(["--tables-only", "--out", str(tmp_path / "none")]) == 2
    assert "end_to_end.json does not exist" in capsys.readouterr().err
    assert end_to_end.main(["--out", str(tmp_path / "none")]) == 2
    assert "give --run RUN_DIR and --data-root DIR" in capsys.readouterr().err


def test_end_to_end_control_pairs_the_image_only_fusion_with_the_runs_models(run_dir, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert end_to_end.main(["--run", str(run_dir), "--data-root", "", "--out", str(out),
                            "--text-fractions", "1,0"]) == 0
    runs = tmp_path / "control"
    control_args = [*TINY, "--learners", "classfusion", "--modalities", "image", "--shots", "1,2",
                    "--set", "learner_options.classfusion.class_text=false", "--out", str(runs)]
    assert cli(control_args) == 0
    (control,) = [d for d in runs.iterdir() if d.name != "manifests"]
    assert end_to_end.main(["--tables-only", "--out", str(out), "--control", str(control)]) == 0
    table = pd.read_csv(out / "control.csv")
    assert table.groupby("n_shot").size().to_dict() == {1: 3, 2: 3}
    own = pd.read_csv(control / "summary.csv").set_index("n_shot")["accuracy"]
    base = pd.read_csv(run_dir / "summary.csv").query("learner == 'protonet'").set_index("n_shot")["accuracy"]
    rows = table[table["against"] == "protonet"].set_index("n_shot")
    assert rows["accuracy"].to_numpy() == pytest.approx(own.loc[rows.index].to_numpy(), abs=0.01)
    assert rows["difference"].to_numpy() == pytest.approx((own - base).loc[rows.index].to_numpy(), abs=0.02)
    reseeded = tmp_path / "reseeded"
    assert cli([*control_args[:-1], str(reseeded), "--seed", "1"]) == 0
    (other,) = [d for d in reseeded.iterdir() if d.name != "manifests"]
    assert end_to_end.main(["--tables-only", "--out", str(out), "--control", str(other)]) == 2
    assert "test episodes differ from the run's" in capsys.readouterr().err


def test_end_to_end_pairs_with_the_protonet_of_another_run_on_the_same_episodes(run_dir, tmp_path, capsys):
    runs = tmp_path / "gate_reg"
    args = [*TINY, "--learners", "am3", "--modalities", "image", "--shots", "1,2",
            "--set", "learner_options.am3.gate_reg=1.0", "--out", str(runs)]
    assert cli(args) == 0
    (gate_reg,) = [d for d in runs.iterdir() if d.name != "manifests"]
    out = tmp_path / "analysis"
    assert end_to_end.main(["--run", str(gate_reg), "--data-root", "", "--out", str(out), "--text-fractions", "1,0",
                            "--baseline-run", str(run_dir)]) == 0
    missing = pd.read_csv(out / "missing_text.csv")
    full = missing[missing["text_fraction"] == 1.0].set_index("n_shot")
    base = pd.read_csv(run_dir / "summary.csv").query("learner == 'protonet'").set_index("n_shot")["accuracy"]
    assert full["vs_protonet"].to_numpy() == pytest.approx((full["run_accuracy"] - base).loc[full.index].to_numpy(),
                                                           abs=0.02)
    assert end_to_end.main(["--tables-only", "--out", str(out), "--baseline-run", str(tmp_path)]) == 2
    assert "holds no run.json" in capsys.readouterr().err


def test_gates_tracked_during_a_harness_run_leave_its_numbers_and_id_unchanged(tmp_path):
    """``train.gate_every`` records AM3's gate per class and the text/image separation of the train, val
    and test classes while the harness trains; the run's id and per-episode results are those of the same
    run without it, and the end-to-end analysis tables the tracked gates."""
    args = [*TINY, "--learners", "am3", "--modalities", "image", "--shots", "1", "--train-episodes", "4"]
    assert cli([*args, "--out", str(tmp_path / "plain")]) == 0
    assert cli([*args, "--set", "train.gate_every=2", "--set", "train.gate_episodes=2",
                "--out", str(tmp_path / "tracked")]) == 0
    (plain,) = [d for d in (tmp_path / "plain").iterdir() if d.name != "manifests"]
    (tracked,) = [d for d in (tmp_path / "tracked").iterdir() if d.name != "manifests"]
    assert plain.name == tracked.name  # tracking does not change what is computed, so not the id
    pd.testing.assert_frame_equal(pd.read_json(plain / "rows.jsonl", lines=True).drop(columns="timestamp", errors="ignore"),
                                  pd.read_json(tracked / "rows.jsonl", lines=True).drop(columns="timestamp", errors="ignore"))
    assert not (plain / "gates").exists()
    records = [json.loads(line) for line in (tracked / "gates" / "am3-image-none.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [(s, sp) for s in (0, 2) for sp in ("train", "val", "test")]
    for r in records:
        assert len(r["gates"]) == r["classes"] and 0 <= r["gate_min"] <= r["gate_mean"] <= r["gate_max"] <= 1
        per_class = list(r["gates"].values())  # to 4 significant digits, so a collapsed gate (1e-7) is not 0
        assert min(per_class) == pytest.approx(r["gate_min"], rel=1e-3)
        assert max(per_class) == pytest.approx(r["gate_max"], rel=1e-3)
        assert 0 <= r["text_accuracy"] <= 1 and 0 <= r["image_accuracy"] <= 1
        assert r["text_loss"] > 0 and r["image_loss"] > 0
    out = tmp_path / "analysis"
    assert end_to_end.main(["--run", str(tracked), "--data-root", "", "--out", str(out), "--text-fractions", "1"]) == 0
    during = pd.read_csv(out / "gates_training.csv")
    assert during[["step", "split"]].values.tolist() == [[s, sp] for s in (0, 2) for sp in ("train", "val", "test")]
    assert during["gate_mean"].tolist() == pytest.approx([r["gate_mean"] for r in records], abs=1e-4)
    assert "text_loss_train" in (out / "gates_training.md").read_text()
    assert ((during["image_norm"] > 0) & (during["text_norm"] > 0)).all()
    # the tracked gates alone, as of a run still training: the same table
    assert end_to_end.main(["--run", str(tracked), "--training-gates-only", "--out", str(tmp_path / "only")]) == 0
    assert (tmp_path / "only" / "gates_training.csv").read_text() == (out / "gates_training.csv").read_text()
    assert not (tmp_path / "only" / "missing_text.csv").exists()
    kept = tmp_path / "kept"  # a committed copy keeps the per-class records gzipped
    (kept / "gates").mkdir(parents=True)
    (kept / "gates" / "am3-image-none.jsonl.gz").write_bytes(
        gzip.compress((tracked / "gates" / "am3-image-none.jsonl").read_bytes()))
    assert end_to_end.main(["--run", str(kept), "--training-gates-only", "--out", str(kept)]) == 0
    assert (kept / "gates_training.csv").read_text() == (out / "gates_training.csv").read_text()
    assert end_to_end.main(["--run", str(plain), "--training-gates-only", "--out", str(tmp_path / "none")]) == 2
