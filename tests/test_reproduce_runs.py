"""Reproduction runs on the built-in synthetic data: several rows from one training, resuming, the
clean-tree rule, eval-only checks (see tests/test_reproduce.py for the committed protocols and tables)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import provenance, reproduce, reproduce_eval, reproduce_train, reproduced
from benchmark.checkpoint import load_checkpoint
from benchmark.stats import mean_ci95
from tasks.errors import BenchmarkError

REPO = Path(__file__).resolve().parents[1]

TINY = """
protocol:
  reference: {reference}
  label: tiny
  deviations: {deviations}
dataset: shapes
dataset_options: {{n_classes: 40, items_per_class: 20}}
learners: [protonet]
modalities: [image]
backbone_options: {{hidden: 8}}
train: {{way: 5, shot: 1, query: 2, episodes: 3, val_every: 0, checkpoint_every: 1}}
eval: {{support_modalities: image, query_modalities: image, ways: [2, 3], shots: [1], query: 3, episodes: {episodes}}}
"""


def _board(results: Path) -> None:
    rows = [{"id": f"shapes-protonet-{w}w1s", "dataset": "shapes", "learner": "protonet", "backbone": "conv4",
             "n_way": w, "n_shot": 1, "test_queries": 3, "test_episodes": 6, "mean": 70.0, "ci95": None,
             "source": "none", "year": 2026, "where": "Table 0", "confirmed": "no", "checked_against": ""}
            for w in (2, 3)]
    results.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(results / "leaderboard.csv", index=False)


def _protocol(tmp_path: Path, name: str = "tiny", reference="[shapes-protonet-2w1s, shapes-protonet-3w1s]",
              deviations: str = "[]", episodes: int = 6) -> reproduce.Protocol:
    configs, results = tmp_path / "configs", tmp_path / "results"
    configs.mkdir(exist_ok=True)
    _board(results)
    (configs / f"{name}.yaml").write_text(TINY.format(reference=reference, deviations=deviations, episodes=episodes))
    return reproduce.load_protocol(name, configs, results)


def _kill_training_at(tmp_path: Path, step: int) -> None:
    """Train the tiny protocol in a subprocess that is SIGKILLed after ``step`` (a machine gone away)."""
    script = ("import sys; from pathlib import Path; from benchmark import provenance, reproduce, reproduce_train;"
              "provenance.dirty_paths = lambda root=None, outputs=(): []; provenance.head_commit = lambda root=None: 'c0ffee';"
              "p = reproduce.load_protocol('tiny', Path(sys.argv[1]), Path(sys.argv[2]));"
              "reproduce_train.train_protocol(p, None, threads=1, results_dir=Path(sys.argv[2]))")
    env = {**os.environ, "MMFS_TEST_KILL_AT_STEP": str(step), "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "configs"), str(tmp_path / "results")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]


@pytest.fixture
def clean(monkeypatch):
    """A clean tree at commit ``c0ffee`` (tests run in checkouts with uncommitted changes)."""
    state = {"dirty": []}
    monkeypatch.setattr(provenance, "dirty_paths", lambda root=None, outputs=(): list(state["dirty"]))
    monkeypatch.setattr(provenance, "head_commit", lambda root=None: "c0ffee")
    monkeypatch.setattr(reproduce_eval, "dirty_paths", lambda root=None, outputs=(): list(state["dirty"]))
    monkeypatch.setattr(reproduce_eval, "head_commit", lambda root=None: "c0ffee")
    return state


def test_deviations_and_test_protocol_differences_make_a_protocol_not_comparable(tmp_path):
    assert _protocol(tmp_path).comparable
    deviating = _protocol(tmp_path, deviations='["trained for 3 episodes instead of 20,000"]')
    assert not deviating.comparable and deviating.deviations == ("trained for 3 episodes instead of 20,000",)
    fewer = _protocol(tmp_path, episodes=4)  # the published rows were tested on 6 episodes
    assert not fewer.comparable and fewer.deviations == ("4 test episodes instead of the paper's 6",)


@pytest.mark.parametrize("reference,deviations,message", [
    ("shapes-protonet-2w1s", "[]", r"no protocol.reference for the evaluation\(s\) \[\(3, 1\)\]"),
    ("[shapes-protonet-2w1s, shapes-protonet-2w1s]", "[]", "named twice"),
    ("[shapes-protonet-2w1s, shapes-protonet-4w1s]", "[]", "is not an id of"),
    ("[shapes-protonet-2w1s, shapes-protonet-3w1s]", "fewer", "list of sentences"),
])
def test_bad_protocols_are_refused_with_the_file_and_key(tmp_path, reference, deviations, message):
    with pytest.raises(BenchmarkError, match=message) as err:
        _protocol(tmp_path, reference=reference, deviations=deviations)
    assert "tiny.yaml" in str(err.value)


def test_one_training_records_a_row_per_evaluation_and_removes_its_training_folder(tmp_path, clean):
    protocol = _protocol(tmp_path)
    results = tmp_path / "results"
    outcomes = reproduce_train.train_protocol(protocol, None, threads=1, results_dir=results)
    assert [o.name for o in outcomes] == ["tiny/2w1s", "tiny/3w1s"]
    table = reproduced.read_reproduced(results).set_index("name")
    assert list(table.index) == ["tiny/2w1s", "tiny/3w1s"]
    assert list(table["reference"]) == ["shapes-protonet-2w1s", "shapes-protonet-3w1s"]
    assert table["comparable"].all() and (table["git_commit"] == "c0ffee").all()
    committed = reproduce.committed_episodes(protocol, results)
    for name, key in (("tiny/2w1s", "2w1s"), ("tiny/3w1s", "3w1s")):
        mean, _ = mean_ci95(np.asarray(committed[key]["accuracy"]))
        assert table.loc[name, "mean"] == round(100 * mean, 2) and table.loc[name, "test_episodes"] == 6
        assert table.loc[name, "within_half_point"] == (abs(table.loc[name, "difference"]) <= 0.5)
    assert "last iterate" in table.iloc[0]["training"]
    assert table["train_wall_time_s"].notna().all() and (table["train_wall_time_s"] >= 0).all()  # 3 tiny steps: ~0.0
    assert (results / "checkpoints" / "tiny.pt").exists()
    training = results / "training"  # the default output folder: emptied of this run once it is final
    assert training.is_dir() and not [p for p in training.iterdir() if p.name != "manifests"]
    assert (results / "README.md").read_text() == reproduced.readme_text(reproduced.read_reproduced(results))


def test_training_resumes_from_in_progress_checkpoints_in_results_training(tmp_path, clean):
    """A run cut off (SIGKILL after step 2) leaves results/training/<run_id>/checkpoints/*.train.pt;
    ``reproduce NAME`` resumes there, and the row says so. Its wall time is the training's own
    record, which counts the killed session up to its last checkpoint."""
    protocol = _protocol(tmp_path)
    _kill_training_at(tmp_path, 2)
    checkpoint, = (tmp_path / "results" / "training").glob("*/checkpoints/*.train.pt")
    killed_session_s = load_checkpoint(checkpoint)["history"]["train_wall_time_s"]
    assert killed_session_s > 0
    reproduce_train.train_protocol(protocol, None, threads=1, results_dir=tmp_path / "results")
    row = reproduced.read_reproduced(tmp_path / "results").iloc[0]
    assert "resumed from step(s) 2" in row["training"] and "interrupted session" not in row["training"]
    assert row["train_wall_time_s"] >= round(killed_session_s, 1)


def test_dirty_tree_keeps_the_training_and_checkpoint_and_writes_no_row(tmp_path, clean):
    protocol, results = _protocol(tmp_path), tmp_path / "results"
    clean["dirty"] = ["learners/protonet.py"]
    with pytest.raises(BenchmarkError, match="not recorded: the model was trained with uncommitted changes"):
        reproduce_train.train_protocol(protocol, None, threads=1, results_dir=results)
    assert not (results / "reproduced.csv").exists() and not (results / "checkpoints" / "tiny.pt").exists()
    run_dir, = [p for p in (results / "training").iterdir() if p.name != "manifests"]
    assert list((run_dir / "checkpoints").glob("*.pt")) and (run_dir / "rows.jsonl").exists()
    clean["dirty"] = []  # committing afterwards does not make that training's code known
    with pytest.raises(BenchmarkError, match=f"delete {run_dir}"):
        reproduce_train.train_protocol(protocol, None, threads=1, results_dir=results)
    assert not (results / "reproduced.csv").exists()


def test_tree_made_dirty_during_training_records_once_clean_without_training_again(tmp_path, clean, monkeypatch):
    protocol, results = _protocol(tmp_path), tmp_path / "results"
    calls = iter([[], ["benchmark/runner.py"]])
    # reproduce's own calls (run.json's git_commit passes the run's output folders and is not counted)
    monkeypatch.setattr(provenance, "dirty_paths", lambda root=None, outputs=None: [] if outputs is not None
                        else next(calls, []))
    with pytest.raises(BenchmarkError, match="Commit or stash the changes, then rerun"):
        reproduce_train.train_protocol(protocol, None, threads=1, results_dir=results)
    assert not (results / "reproduced.csv").exists()
    reproduce_train.train_protocol(protocol, None, threads=1, results_dir=results)
    row = reproduced.read_reproduced(results).iloc[0]
    assert "resumed" not in row["training"] and pd.notna(row["train_wall_time_s"])


def test_eval_only_writes_a_check_and_never_rewrites_the_rows(tmp_path, clean):
    protocol, results = _protocol(tmp_path), tmp_path / "results"
    reproduce_train.train_protocol(protocol, None, threads=1, results_dir=results)
    before = {p: (results / p).read_bytes() for p in ("reproduced.csv", "README.md")}
    outcomes = reproduce_eval.evaluate_checkpoint(protocol, None, str(tmp_path / "eval"), threads=1,
                                                  results_dir=results)
    dest = tmp_path / "eval" / "checks" / "tiny.json"
    path, equal = reproduce_eval.write_check(protocol, outcomes, "cmd", dest, results_dir=results)
    check = json.loads(path.read_text())
    assert equal and path == dest
    row = check["rows"]["tiny/3w1s"]
    assert row["episodes"] == 6 and row["equals_committed_episodes"] and check["format"] == 2
    committed = json.loads((results / "checkpoints" / "tiny.episodes.json").read_text())["evals"]
    assert row["accuracy"] == committed["3w1s"]["accuracy"]  # the values compared, not only a verdict
    assert "committed_accuracy" not in row and check["compared_with"]["path"] == "checkpoints/tiny.episodes.json"
    assert {"git_commit", "date", "hardware", "command"} <= set(check)
    assert all((results / p).read_bytes() == data for p, data in before.items())
    prefix = reproduce_eval.evaluate_checkpoint(protocol, None, str(tmp_path / "eval"), threads=1, test_episodes=2,
                                                results_dir=results)
    assert not prefix[0].full_manifest and reproduce_eval.write_check(protocol, prefix, "cmd", dest,
                                                                      results_dir=results)[1]
    assert json.loads(dest.read_text())["rows"]["tiny/3w1s"]["accuracy"] == committed["3w1s"]["accuracy"][:2]
    episodes = results / "checkpoints" / "tiny.episodes.json"  # a tampered record is caught, and shown
    data = json.loads(episodes.read_text())
    data["evals"]["2w1s"]["accuracy"][0] = -1.0
    episodes.write_text(json.dumps(data))
    assert not reproduce_eval.write_check(protocol, outcomes, "cmd", dest, results_dir=results)[1]
    row = json.loads(dest.read_text())["rows"]["tiny/2w1s"]
    assert row["committed_accuracy"][0] == -1.0 and row["differing_episodes"] == [0]
    assert row["accuracy"][1:] == row["committed_accuracy"][1:]


def test_eval_only_cli_leaves_the_committed_check_alone_unless_asked(tmp_path, clean, monkeypatch, capsys):
    """`reproduce NAME --eval-only` writes its check under --out (runs/ by default, git-ignored) and says
    where; only --update-check replaces the committed results/checks/NAME.json."""
    from benchmark.cli import main

    protocol, results = _protocol(tmp_path), tmp_path / "results"
    reproduce_train.train_protocol(protocol, None, threads=1, results_dir=results)
    committed = results / "checks" / "tiny.json"
    committed.parent.mkdir()
    committed.write_text('{"protocol": "tiny", "old": true}\n')
    monkeypatch.setattr(reproduce, "RESULTS_DIR", results)
    monkeypatch.setattr(reproduce, "load_protocol", lambda name, results_dir: protocol)
    out = tmp_path / "eval"
    assert main(["reproduce", "tiny", "--eval-only", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert committed.read_text() == '{"protocol": "tiny", "old": true}\n'
    check = json.loads((out / "checks" / "tiny.json").read_text())
    assert f"check written to {out / 'checks' / 'tiny.json'}" in printed and "--update-check" in printed
    assert len(check["rows"]["tiny/2w1s"]["accuracy"]) == 6 and "--update-check" not in check["command"]
    assert main(["reproduce", "tiny", "--eval-only", "--threads", "1", "--out", str(out), "--update-check"]) == 0
    assert f"check written to {committed}" in capsys.readouterr().out
    updated = json.loads(committed.read_text())
    assert updated["rows"] == check["rows"] and updated["command"].endswith("--update-check --threads 1")
    assert main(["reproduce", "tiny", "--update-check"]) == 2
    assert "--update-check only applies with --eval-only" in capsys.readouterr().err


def test_eval_only_without_checkpoint_says_how_to_train(tmp_path):
    with pytest.raises(BenchmarkError, match="train it first"):
        reproduce_eval.evaluate_checkpoint(_protocol(tmp_path), None, str(tmp_path), results_dir=tmp_path / "results")


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def test_dirty_paths_ignore_what_reproduce_writes(tmp_path):
    repo = tmp_path / "repo"
    (repo / "results").mkdir(parents=True)
    (repo / "code.py").write_text("a = 1\n")
    (repo / "results" / "reproduced.csv").write_text("name\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "x")
    (repo / "results" / "reproduced.csv").write_text("name\nx\n")
    for output in ("training/run/checkpoints/m.train.pt", "checks/p.json", "checkpoints/p.pt", "README.md"):
        (repo / "results" / output).parent.mkdir(parents=True, exist_ok=True)
        (repo / "results" / output).write_text("x")
    assert provenance.dirty_paths(repo) == []
    (repo / "code.py").write_text("a = 2\n")
    (repo / "new.py").write_text("")
    (repo / "results" / "leaderboard.csv").write_text("id\n")  # the published numbers are not an output
    assert sorted(provenance.dirty_paths(repo)) == ["code.py", "new.py", "results/leaderboard.csv"]
    (tmp_path / "plain").mkdir()
    with pytest.raises(BenchmarkError, match="not a git checkout"):
        provenance.dirty_paths(tmp_path / "plain")


def test_run_records_and_rows_share_one_dirty_rule(tmp_path):
    """run.json's commit and a reproduction row use the same rule: code changes (tracked or untracked) make
    a tree dirty; what the suite writes (a run's own --out folder, even a tracked one) does not."""
    repo = tmp_path / "repo"
    (repo / "results" / "study" / "run").mkdir(parents=True)
    (repo / "code.py").write_text("a = 1\n")
    (repo / "results" / "study" / "run" / "rows.jsonl").write_text("{}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "x")
    commit = provenance.head_commit(repo)
    (repo / "results" / "study" / "run" / "rows.jsonl").write_text("{}\n{}\n")  # a rerun writes its tracked rows
    assert provenance.git_commit((repo / "results" / "study",), root=repo) == commit
    assert provenance.git_commit(root=repo) == commit + "-dirty"  # not this process's output: a change
    (repo / "helper.py").write_text("")  # untracked code counts, as for reproduction rows
    assert provenance.git_commit((repo / "results" / "study",), root=repo) == commit + "-dirty"


def test_interim_rows_say_how_far_the_model_was_trained_and_the_training_goes_on(tmp_path, clean):
    protocol, results = _protocol(tmp_path), tmp_path / "results"
    with pytest.raises(BenchmarkError, match="no in-progress checkpoint .* start or resume the training with"):
        reproduce_train.record_interim(protocol, None, threads=1, results_dir=results)
    _kill_training_at(tmp_path, 2)
    outcomes = reproduce_train.record_interim(protocol, None, threads=1, results_dir=results)
    table = reproduced.read_reproduced(results).set_index("name")
    row = table.loc["tiny/2w1s"]
    assert "interim: 2 of 3 steps" in row["training"] and not table["comparable"].any()
    assert "trained 2 of the protocol's 3 steps" in row["protocol_deviations"]
    assert "--interim" in row["command"] and "stopped after step 2" in row["command"]
    checkpoint, = (results / "training").glob("*/checkpoints/*.train.pt")  # its own record, though killed:
    assert row["train_wall_time_s"] == round(load_checkpoint(checkpoint)["history"]["train_wall_time_s"], 1)
    assert row["mean"] == outcomes[0].comparison()["mean"]
    # the committed interim model gives back its rows exactly, as a final one
    again = reproduce_eval.evaluate_checkpoint(protocol, None, str(tmp_path / "eval"), threads=1, results_dir=results)
    assert reproduce_eval.write_check(protocol, again, "cmd", tmp_path / "check.json", results_dir=results)[1]
    # the training folder and its checkpoint stay: the same command finishes it and replaces the rows
    assert list((results / "training").glob("*/checkpoints/*.train.pt"))
    reproduce_train.train_protocol(protocol, None, threads=1, results_dir=results)
    final = reproduced.read_reproduced(results).set_index("name")
    assert final["comparable"].all() and "interim" not in final.loc["tiny/2w1s", "training"]
    assert "resumed from step(s) 2" in final.loc["tiny/2w1s", "training"]
    with pytest.raises(BenchmarkError, match="no in-progress checkpoint"):  # final: nothing left to record
        reproduce_train.record_interim(protocol, None, threads=1, results_dir=results)


def test_interim_rows_need_a_clean_tree(tmp_path, clean):
    protocol, results = _protocol(tmp_path), tmp_path / "results"
    _kill_training_at(tmp_path, 2)
    clean["dirty"] = ["learners/protonet.py"]
    with pytest.raises(BenchmarkError, match="not recorded: uncommitted changes in learners/protonet.py"):
        reproduce_train.record_interim(protocol, None, threads=1, results_dir=results)
    assert not (results / "reproduced.csv").exists() and not (results / "checkpoints" / "tiny.pt").exists()

