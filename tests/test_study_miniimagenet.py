"""The miniImageNet class-text study end to end on a real 300-image subset (frozen random Conv-4)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from benchmark.studies.cli import main
from learners.backbones import Conv4
from test_datasets import SHARED, needs_shared

pytestmark = needs_shared


def _study(tmp_path, checkpoint, *extra: str) -> int:
    return main(["--data-root", str(SHARED), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "study"),
                 "--image-size", "32", "--hidden", "8", "--classes-per-split", "5", "--max-per-class", "20",
                 "--shots", "1", "--test-episodes", "12", "--train-episodes", "4", "--train-way", "5",
                 "--val-every", "2", "--val-episodes", "3", "--gate-every", "2", "--gate-episodes", "2",
                 "--text-fractions", "1,0.4,0", "--threads", "1", *extra])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("backbone") / "conv4.pt"
    torch.save({f"encoder.encoders.image.{k}": v for k, v in Conv4((3, 32, 32), hidden=8).state_dict().items()},
               path)
    return path


def test_study_writes_paired_comparisons_gates_and_missing_text(tmp_path, checkpoint):
    methods = "protonet,text_only,am3,fusion_film,control_mean,fusion_late"
    assert _study(tmp_path, checkpoint, "--methods", methods) == 0
    out = tmp_path / "study"
    rows = pd.read_json(out / "rows.jsonl", lines=True)
    assert set(rows["method"]) == {"protonet", "text_only", "am3", "fusion_film", "control_mean"}  # late: rejected
    assert json.loads((out / "study.json").read_text())["skipped"].keys() == {"fusion_late"}
    assert rows["manifest_sha256"].nunique() == 1  # one fixed test manifest for every method
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison["method"]) == {"text_only", "am3", "fusion_film", "control_mean"}
    text_gain = pd.read_csv(out / "text_gain.csv")  # the text's share: fusion_film vs its image-only control
    assert text_gain[["method", "control"]].values.tolist() == [["fusion_film", "protonet"]]  # FiLM: identity
    control = rows[rows["method"] == "protonet"].sort_values("episode")["value"].to_numpy()
    film = rows[(rows["method"] == "fusion_film") & (rows["text_fraction"] == 1.0)].sort_values("episode")
    assert text_gain["difference"].iloc[0] == pytest.approx(100 * (film["value"].to_numpy() - control).mean(), abs=0.01)
    assert comparison["p_value"].between(0, 1).all() and (comparison["n_episodes"] == 12).all()
    missing = pd.read_csv(out / "missing_text.csv")
    assert set(missing["method"]) == {"text_only", "am3", "fusion_film"}
    assert sorted(missing["text_fraction"].unique()) == [0.0, 0.4, 1.0]
    curve = pd.read_csv(out / "missing_text_curve.csv")  # the same accuracies, one column per p
    assert list(curve.columns) == ["method", "n_shot", "p=1", "p=0.4", "p=0"]
    assert curve.set_index("method")["p=0.4"].to_dict() == missing[missing["text_fraction"] == 0.4].set_index(
        "method")["accuracy"].to_dict()
    by_p = rows.set_index(["method", "text_fraction", "episode"])["value"].sort_index()
    for method in ("text_only", "am3"):  # without text AM3's prototypes are the image ones, i.e. ProtoNet's
        assert (by_p[method, 0.0].to_numpy() == by_p["protonet", 1.0].to_numpy()).all()
    gates = pd.read_csv(out / "gates.csv")
    assert set(gates["method"]) == {"am3"} and set(gates["split"]) == {"train", "val", "test"}
    assert sorted(gates["step"].unique()) == [0, 2]
    per_class = [json.loads(line) for line in (out / "gates-am3-1shot.jsonl").read_text().splitlines()]
    assert all(len(r["gates"]) == 5 for r in per_class)
    assert (out / "summary.md").exists() and (out / "checkpoints" / "am3-1shot.pt").exists()
    before = (out / "rows.jsonl").read_text()
    assert _study(tmp_path, checkpoint, "--methods", methods) == 0  # a rerun finds everything done
    assert (out / "rows.jsonl").read_text() == before
    (out / "comparison.csv").unlink()
    (out / "text_gain.csv").unlink()
    (out / "gates_overview.csv").unlink()
    (out / "rows.jsonl").unlink()  # as in a clone: only the compressed copy is committed
    assert main(["--tables-only", "--out", str(out)]) == 0  # the tables come back from the rows alone
    pd.testing.assert_frame_equal(pd.read_csv(out / "comparison.csv"), comparison)
    pd.testing.assert_frame_equal(pd.read_csv(out / "text_gain.csv"), text_gain)
    overview = pd.read_csv(out / "gates_overview.csv")
    assert set(overview["split"]) == {"train", "val", "test"} and overview["gate_kept"].between(0, 1).all()


def test_study_errors_name_what_to_fix(tmp_path, checkpoint, capsys):
    assert _study(tmp_path, checkpoint, "--methods", "am3") == 2
    assert "keep it in --methods" in capsys.readouterr().err
    assert _study(tmp_path, checkpoint, "--methods", "protonet,am4") == 2
    assert "unknown study method(s) ['am4']" in capsys.readouterr().err
    assert _study(tmp_path, tmp_path / "missing.pt", "--methods", "protonet") == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert _study(tmp_path, checkpoint, "--text-fractions", "1,2") == 2
    assert "2.0 is not in [0, 1]" in capsys.readouterr().err
    assert _study(tmp_path, checkpoint, "--train-way", "1") == 2
    assert "--train-way 1 is out of range: it must be >= 2" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert _study(tmp_path, checkpoint, "--out", str(tmp_path / "file" / "study")) == 2
    assert "cannot create the study folder" in capsys.readouterr().err
    assert main(["--tables-only", "--out", str(tmp_path / "nothing")]) == 2
    assert "rows.jsonl does not exist" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "nothing")]) == 2
    assert "give --data-root and --checkpoint" in capsys.readouterr().err


def test_warm_started_am3_starts_from_the_trained_text_map(tmp_path, checkpoint, capsys):
    assert _study(tmp_path, checkpoint, "--methods", "protonet,am3_text_warm") == 2
    assert "needs 'text_only' trained first" in capsys.readouterr().err
    assert _study(tmp_path, checkpoint, "--methods", "protonet,text_only,am3,am3_text_warm") == 0
    out = tmp_path / "study"
    first = {m: json.loads((out / f"gates-{m}-1shot.jsonl").read_text().splitlines()[0]) for m in ("am3", "am3_text_warm")}
    assert first["am3"]["step"] == first["am3_text_warm"]["step"] == 0
    assert first["am3"]["gates"] != first["am3_text_warm"]["gates"]  # same seed: only the copied g differs


def test_geometry_reads_the_trained_am3_heads_of_a_study(tmp_path, checkpoint, capsys):
    from benchmark.studies import geometry

    args = ["--data-root", str(SHARED), "--checkpoint", str(checkpoint), "--study", str(tmp_path / "study"),
            "--image-size", "32", "--hidden", "8", "--classes-per-split", "5", "--max-per-class", "20",
            "--threads", "1"]
    assert geometry.main(args) == 2
    assert "give the --out folder of a study run" in capsys.readouterr().err
    assert _study(tmp_path, checkpoint, "--methods", "protonet,am3") == 0
    assert geometry.main([*args, "--methods", "am3", "--shots", "5"]) == 2
    assert "am3-5shot.pt does not exist" in capsys.readouterr().err
    assert geometry.main([*args, "--methods", "protonet"]) == 2
    assert "not an AM3 variant" in capsys.readouterr().err
    assert geometry.main(args) == 0
    rows = json.loads((tmp_path / "study" / "geometry.json").read_text())
    assert [(r["state"], r["split"]) for r in rows] == [(s, p) for s in ("init", "trained")
                                                        for p in ("train", "val", "test")]
    assert all(r["classes"] == 5 and 0 < r["lambda"] < 1 for r in rows)
    init, trained = rows[0], rows[3]
    assert init["image_feature_norm"] == trained["image_feature_norm"]  # same frozen features
    assert init["text_prototype_norm"] != trained["text_prototype_norm"]  # the trained g was loaded


def test_backbone_choice_compares_frozen_backbones_on_validation_episodes(tmp_path, checkpoint, capsys):
    from benchmark.studies import backbone_choice

    dead = tmp_path / "dead.pt"  # every weight zero: identical features, so every query goes to class 0
    torch.save({k: torch.zeros_like(v) for k, v in torch.load(checkpoint, weights_only=True).items()}, dead)
    out = tmp_path / "choice"
    args = ["--data-root", str(SHARED), "--out", str(out), "--image-size", "32", "--hidden", "8",
            "--classes-per-split", "5", "--max-per-class", "20", "--episodes", "30", "--threads", "1"]
    assert backbone_choice.main([*args, "--candidate", f"dead={dead}", "--candidate", f"random={checkpoint}",
                                 "--candidate", f"again={checkpoint}"]) == 0
    table = pd.read_csv(out / "backbone_choice.csv").set_index(["candidate", "n_shot"])
    labels = ("dead", "dead/l2", "random", "random/l2", "again", "again/l2")
    assert set(table.index) == {(c, s) for c in labels for s in (1, 5)}
    assert (table.loc["dead/l2", "accuracy"] == 20.0).all() and (table.loc["random/l2", "accuracy"] > 20.0).all()
    assert (table.loc["dead", "accuracy"] == 20.0).all() and (table.loc["dead", "difference"] == 0).all()
    assert (table.loc["random", "accuracy"] > 20.0).all()  # real images: random features beat chance
    assert (table.loc["again", "accuracy"] == table.loc["random", "accuracy"]).all()  # same episodes, same weights
    assert table.loc["random", "difference"].to_numpy() == pytest.approx(table.loc["random", "accuracy"] - 20, abs=0.01)
    assert table.loc[("random", 5), "p_value"] < 0.01
    record = json.loads((out / "backbone_choice.json").read_text())
    assert list(table.index.get_level_values(0)[:6]) == list(labels)  # in the order given
    assert record["chosen"] in ("random", "random/l2") and set(record["manifest_sha256"]) == {"1", "5"}
    assert not (out / "checkpoints").exists()  # nothing is trained
    assert backbone_choice.main([*args, "--candidate", f"a={tmp_path / 'missing.pt'}"]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert backbone_choice.main([*args, "--candidate", str(checkpoint)]) == 2
    assert "write it as LABEL=PATH" in capsys.readouterr().err
    assert backbone_choice.main([*args, "--candidate", f"a={dead}", "--candidate", f"a={checkpoint}"]) == 2
    assert "labels repeat" in capsys.readouterr().err
    assert backbone_choice.main([*args, "--candidate", f"a={dead}", "--features", "raw,cos"]) == 2
    assert "choose raw, l2 or raw,l2" in capsys.readouterr().err


def test_geometry_uses_the_feature_scale_the_study_trained_on(tmp_path, checkpoint):
    from benchmark.studies import geometry

    assert _study(tmp_path, checkpoint, "--methods", "protonet,am3", "--l2-scale", "2") == 0
    assert json.loads((tmp_path / "study" / "study.json").read_text())["config"]["l2_scale"] == 2.0
    assert geometry.main(["--data-root", str(SHARED), "--checkpoint", str(checkpoint), "--study",
                          str(tmp_path / "study"), "--image-size", "32", "--hidden", "8", "--classes-per-split", "5",
                          "--max-per-class", "20", "--threads", "1"]) == 0
    rows = json.loads((tmp_path / "study" / "geometry.json").read_text())
    assert all(r["image_feature_norm"] == pytest.approx(2.0) for r in rows)  # read from study.json


def test_fusion_is_chosen_on_validation_classes_only(tmp_path, checkpoint, capsys):
    """`--eval-split val --select-fusion` scores the fusions on validation classes and records the choice;
    a study scored on test classes refuses to choose."""
    methods = "protonet,fusion_attention,fusion_mean"
    assert _study(tmp_path, checkpoint, "--methods", methods, "--eval-split", "val", "--text-fractions", "1",
                  "--select-fusion") == 0
    out = tmp_path / "study"
    rows = pd.read_json(out / "rows.jsonl", lines=True)
    assert set(rows["split"]) == {"val"}
    record = json.loads((out / "selection.json").read_text())
    assert record["split"] == "val" and record["what"] == "learner_options.classfusion.fusion"
    assert set(record["scores"]) == {"attention", "mean"} and record["choice"] == max(record["scores"],
                                                                                      key=record["scores"].get)
    fusion = rows[rows["method"] == f"fusion_{record['choice']}"]["value"].mean()
    assert record["scores"][record["choice"]] == pytest.approx(fusion)
    test_dir = tmp_path / "on_test"
    test_dir.mkdir()
    assert main(["--data-root", str(SHARED), "--checkpoint", str(checkpoint), "--out", str(test_dir / "study"),
                 "--image-size", "32", "--hidden", "8", "--classes-per-split", "5", "--max-per-class", "20",
                 "--shots", "1", "--test-episodes", "4", "--train-episodes", "2", "--train-way", "5",
                 "--val-every", "0", "--gate-every", "0", "--text-fractions", "1", "--threads", "1",
                 "--methods", methods, "--select-fusion"]) == 2
    assert "'test' split" in capsys.readouterr().err
    assert test_dir.joinpath("study", "rows.jsonl").exists()  # the study's own numbers are kept
