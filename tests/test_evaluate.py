"""`evaluate` and the Python API on the committed Omniglot checkpoint, on fixed episodes of image files."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.checkpoint import read_model
from benchmark.cli import main
from benchmark.provenance import cpu_model
from benchmark.savedmodel import load_learner
from omniglot_episodes import split_characters, write_episodes
from tasks.errors import BenchmarkError
from test_reproduce import SHARED, needs_omniglot

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "checkpoints" / "omniglot_protonet_5w1s_2k.pt"  # upgraded from a bare state dict
CONFIG = REPO / "benchmark" / "configs" / "omniglot_protonet_5w1s_2k.yaml"


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """The committed model's tensors as a bare state dict, the format of the older checkpoints."""
    path = tmp_path_factory.mktemp("bare") / COMMITTED.name
    torch.save(read_model(COMMITTED)[0], path)
    return path


@pytest.fixture(scope="module")
def omniglot_learner(bare):
    torch.set_num_threads(1)
    return load_learner(bare, CONFIG, str(SHARED))


@pytest.fixture(scope="module")
def episode_file(tmp_path_factory):
    """Three 20-way 1-shot 2-query episodes: two of test characters, one of training characters."""
    test, train = split_characters("test"), split_characters("train")
    path = tmp_path_factory.mktemp("episodes") / "omniglot_20w1s.json"
    return write_episodes(path, SHARED, [test[:20], test[40:60], train[:20]], shot=1, query=2)


@needs_omniglot
def test_evaluate_episode_file_end_to_end(bare, episode_file, tmp_path, capsys, caplog):
    """The issue's test: `evaluate --episodes` on an older (bare) checkpoint writes predictions.csv
    naming every query file, and flags the episode of training characters."""
    code = main(["evaluate", "--checkpoint", str(bare), "--config", str(CONFIG), "--data-root", str(SHARED),
                 "--episodes", str(episode_file), "--out", str(tmp_path), "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "bare state dict" in caplog.text and "1 of 3 episodes show classes the checkpoint was trained on" in caplog.text
    (run_dir,) = list(tmp_path.iterdir())
    preds = pd.read_csv(run_dir / "predictions.csv")
    assert {"episode", "item", "label", "prediction", "score", "correct", "in_training_classes"} <= set(preds.columns)
    spec = json.loads(episode_file.read_text())["episodes"]
    assert len(preds) == 3 * 20 * 2
    for episode in spec:
        rows = preds[preds["episode"] == episode["id"]]
        expected = {f: label for label, files in episode["query"].items() for f in files}
        assert dict(zip(rows["item"], rows["label"])) == expected
        assert set(rows["prediction"]) <= set(episode["support"])
        assert rows["correct"].mean() > 0.5  # chance is 0.05
    assert preds.groupby("episode")["in_training_classes"].first().to_dict() == {"ep0": False, "ep1": False, "ep2": True}
    assert ((preds["score"] > 0) & (preds["score"] <= 1)).all()
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    accuracy = {r["episode_id"]: r["value"] for r in rows if r["metric"] == "accuracy"}
    assert accuracy == pytest.approx(preds.groupby("episode")["correct"].mean().to_dict())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["bare_checkpoint"] and record["episodes"][0]["in_training_classes"] == 1
    assert record["cpu"] == cpu_model() != ""
    assert (run_dir / "summary.md").exists()


MAML = REPO / "results" / "checkpoints" / "omniglot_maml_5w1s.pt"
MAML_CONFIG = REPO / "benchmark" / "configs" / "omniglot_maml_5w1s.yaml"


def _rows_by_episode(run_dir: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    return {r["episode_id"]: r for r in rows if r["metric"] == "accuracy"}


@needs_omniglot
def test_single_query_trials_evaluate_end_to_end(bare, tmp_path, capsys, caplog):
    """20-way one-shot trials with one query each (19 classes without a query) evaluate: one row per
    trial, its accuracy 0 or 1 as its one prediction; so do episodes whose classes hold 2, 1 or 0
    queries (accuracy: the fraction of the episode's queries that are right), also for MAML (5-way;
    episodes with as many queries, however spread over classes, are adapted together)."""
    test = split_characters("test")
    trials = write_episodes(tmp_path / "trials.json", SHARED, [test[20 * k:20 * k + 20] for k in range(4)], shot=1,
                            queries_per_class=[[int(i == k) for i in range(20)] for k in range(4)])
    trials5 = write_episodes(tmp_path / "trials5.json", SHARED, [test[5 * k:5 * k + 5] for k in range(3)], shot=1,
                             queries_per_class=[[int(i == k) for i in range(5)] for k in range(3)])
    mixed = write_episodes(tmp_path / "mixed.json", SHARED, [test[:5], test[5:10], test[10:15]], shot=1,
                           queries_per_class=[[2, 1, 0, 0, 1], [0, 0, 3, 0, 1], [1, 1, 1, 1, 0]])
    for checkpoint, config, episodes, n_queries in ((bare, CONFIG, trials, [1, 1, 1, 1]),
                                                    (bare, CONFIG, mixed, [4, 4, 4]),
                                                    (MAML, MAML_CONFIG, trials5, [1, 1, 1]),
                                                    (MAML, MAML_CONFIG, mixed, [4, 4, 4])):
        out = tmp_path / f"{checkpoint.stem}-{episodes.stem}"
        code = main(["evaluate", "--checkpoint", str(checkpoint), "--config", str(config), "--data-root", str(SHARED),
                     "--episodes", str(episodes), "--out", str(out), "--threads", "1"])
        assert code == 0, capsys.readouterr().err
        (run_dir,) = list(out.iterdir())
        preds = pd.read_csv(run_dir / "predictions.csv")
        assert preds.groupby("episode", sort=False).size().tolist() == n_queries
        spec = json.loads(episodes.read_text())["episodes"]
        for episode in spec:  # every query is named with its own label, predictions among the episode's classes
            mine = preds[preds["episode"] == episode["id"]]
            assert dict(zip(mine["item"], mine["label"])) == {f: c for c, fs in episode["query"].items() for f in fs}
            assert set(mine["prediction"]) <= set(episode["support"])
        rows = _rows_by_episode(run_dir)
        accuracy = preds.groupby("episode")["correct"].mean().to_dict()  # the right fraction of its queries
        assert {k: r["value"] for k, r in rows.items()} == pytest.approx(accuracy)
        assert [(r["n_way"], r["n_shot"], r["n_queries"]) for r in rows.values()] == [
            (len(e["support"]), 1, n) for e, n in zip(spec, n_queries)]
        assert all(r["n_query"] is None for r in rows.values())  # queries per class: not one number
        summary = pd.read_csv(run_dir / "summary.csv")  # one row: the source's episodes together
        assert len(summary) == 1 and summary["n_episodes"].item() == len(spec)
        assert ("is transductive" in caplog.text) == (checkpoint == MAML)
        caplog.clear()
    capsys.readouterr()


@needs_omniglot
def test_files_and_dataset_indices_give_the_same_predictions(omniglot_learner, episode_file, tmp_path):
    """Image files decoded with the checkpoint's preprocessing equal the dataset's own items."""
    from benchmark import evaluate
    from tasks.datasets import load_dataset

    dataset = load_dataset("omniglot", str(SHARED))
    index = {}
    for label, name in enumerate(dataset.class_names):
        if name.endswith("rot000"):
            index[name] = dataset.items_by_class()[label]
    by_index = []
    for episode in json.loads(episode_file.read_text())["episodes"]:
        sides = {}
        for side in ("support", "query"):
            sides[side] = {c: [int(index[c][int(Path(f).stem.split("_")[1]) - 1]) for f in files]
                           for c, files in episode[side].items()}
        by_index.append({"id": episode["id"], **sides})
    index_file = tmp_path / "by_index.json"
    index_file.write_text(json.dumps({"episodes": by_index}))
    from_files = evaluate(omniglot_learner, episode_file)
    from_index = evaluate(omniglot_learner, index_file, dataset=dataset)
    assert (from_files["prediction"] == from_index["prediction"]).all()
    np.testing.assert_allclose(from_files["score"], from_index["score"], atol=1e-5)
    assert from_index["item"].str.isdigit().all()


@needs_omniglot
def test_sampled_episodes_are_the_runs_test_manifest(omniglot_learner):
    """Without an episode file, `evaluate` samples the test manifest of `run` (same seed): the first
    episodes give exactly the committed per-episode accuracies of this checkpoint."""
    from benchmark import evaluate

    preds = evaluate(omniglot_learner, data_root=str(SHARED), ways=[5], shots=[1], n_episodes=20)
    committed = json.loads(COMMITTED.with_suffix(".episodes.json").read_text())["accuracy"][:20]
    accuracy = preds.groupby("episode", sort=False)["correct"].mean().to_numpy()
    assert np.array_equal(accuracy, np.asarray(committed))
    assert not preds["in_training_classes"].any()


@needs_omniglot
def test_evaluate_seed_is_recorded_in_rows_summary_and_run_json(bare, episode_file, tmp_path, capsys):
    """`evaluate --seed 7` records 7, the seed that drew its episodes, in every row, in summary.csv and
    in run.json (it used to write the checkpoint's seed, 0); without --seed, the checkpoint's run seed."""
    args = ["evaluate", "--checkpoint", str(bare), "--config", str(CONFIG), "--data-root", str(SHARED),
            "--ways", "5", "--shots", "1", "--test-episodes", "2", "--threads", "1"]
    shas = {}
    for seed in ("7", None):
        out = tmp_path / f"seed{seed}"
        assert main(args + ["--out", str(out)] + (["--seed", seed] if seed else [])) == 0, capsys.readouterr().err
        (run_dir,) = list(out.iterdir())
        expected = 7 if seed else 0  # the bare checkpoint's config trained with seed 0
        rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
        assert {r["seed"] for r in rows} == {expected}
        assert set(pd.read_csv(run_dir / "summary.csv")["seed"]) == {expected}
        record = json.loads((run_dir / "run.json").read_text())
        assert [e["seed"] for e in record["episodes"]] == [expected] and record["model"]["seed"] == 0
        shas[seed] = record["episodes"][0]["sha256"]
    assert shas["7"] != shas[None]  # another seed, other episodes
    # a file's episodes are not drawn: a seed with them is refused, not silently ignored
    assert main(args[:7] + ["--episodes", str(episode_file), "--seed", "7", "--out", str(tmp_path / "f")]) == 2
    assert "seed (--seed) only apply to sampled episodes" in capsys.readouterr().err


@needs_omniglot
def test_upgrade_writes_a_self_describing_copy(bare, omniglot_learner, episode_file, tmp_path, capsys):
    new = tmp_path / "upgraded.pt"
    assert main(["upgrade-checkpoint", str(bare), "--config", str(CONFIG), "--data-root", str(SHARED),
                 "--out", str(new)]) == 0
    raw = torch.load(new, weights_only=True)  # plain values and tensors only
    meta = json.loads(raw["meta"])
    assert meta["preprocessing"]["mode"] == "L" and meta["preprocessing"]["resample"] == "lanczos"
    assert meta["preprocessing"]["image_shape"] == [1, 28, 28] and not meta["preprocessing"]["invert"]
    assert meta["preprocessing"]["mean"] == omniglot_learner.benchmark_info.meta["preprocessing"]["mean"]
    assert len(meta["dataset"]["train_classes"]) == 4112 and meta["learner"] == "protonet"
    assert meta["dataset"]["fingerprint"] and meta["upgraded_from"] == {
        "sha256": hashlib.sha256(bare.read_bytes()).hexdigest(), "path": bare.name, "commit": None, "same_weights": True}
    assert meta["config"]["data_root"] is None and meta["dataset"]["info"]["root"] == "omniglot-py"  # not absolute
    assert all(torch.equal(v, raw["state_dict"][k]) for k, v in read_model(bare)[0].items())
    from benchmark import evaluate

    upgraded = load_learner(new)  # no config needed any more
    assert not upgraded.benchmark_info.bare
    first = evaluate(omniglot_learner, episode_file)
    again = evaluate(upgraded, episode_file)
    pd.testing.assert_frame_equal(first, again)
    assert main(["upgrade-checkpoint", str(new), "--config", str(CONFIG), "--data-root", str(SHARED),
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "already a self-describing" in capsys.readouterr().err


@needs_omniglot
def test_committed_checkpoint_evaluates_without_config(tmp_path, capsys):
    """`evaluate --checkpoint results/checkpoints/NAME.pt --data-root DIR`: the committed model describes
    itself, and the first test episodes give its committed per-episode accuracies."""
    code = main(["evaluate", "--checkpoint", str(COMMITTED), "--data-root", str(SHARED), "--ways", "5",
                 "--test-episodes", "5", "--out", str(tmp_path), "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    (run_dir,) = list(tmp_path.iterdir())
    preds = pd.read_csv(run_dir / "predictions.csv")
    committed = json.loads(COMMITTED.with_suffix(".episodes.json").read_text())["accuracy"][:5]
    assert np.array_equal(preds.groupby("episode", sort=False)["correct"].mean().to_numpy(), np.asarray(committed))
    record = json.loads((run_dir / "run.json").read_text())
    assert not record["bare_checkpoint"] and record["model"]["upgraded_from"]["same_weights"]


def test_bare_checkpoint_without_config_names_what_it_lacks(bare, tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(bare), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "bare state dict" in err and "normalisation statistics" in err and "training classes" in err
    assert "--config" in err and "upgrade-checkpoint" in err


def test_missing_or_unreadable_checkpoint(tmp_path):
    with pytest.raises(BenchmarkError, match="checkpoint not found"):
        load_learner(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BenchmarkError, match="cannot read checkpoint"):
        load_learner(bad)


def test_import_benchmark_is_cheap_and_exports_the_api():
    code = ("import sys, benchmark; assert 'torch' not in sys.modules, 'torch imported';"
            "from benchmark import run, evaluate, load_learner; import benchmark.runner;"
            "from benchmark import evaluate as e; assert callable(e) and e.__module__ == 'benchmark.api', e")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
