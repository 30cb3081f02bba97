"""Reproduction protocols: configs and published rows, rows that cannot drift, eval-only checks, the README."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import reproduce, reproduce_eval, reproduce_train, reproduced
from benchmark.cli import main
from benchmark.config import merge
from benchmark.runner import config_hash
from benchmark.stats import mean_ci95
from tasks.errors import BenchmarkError

REPO = Path(__file__).resolve().parents[1]
ROW = "omniglot_protonet_5w1s_2k"  # a committed row (reduced budget: not comparable)
FIXTURE = "omniglot_protonet_5w1s_short"  # a committed checkpoint without a row (trained from a dirty tree)


def _shared_data() -> Path | None:
    env = os.environ.get("MMFS_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", REPO.parents[1] / "shared" / "data"]
    return next((c for c in candidates if (c / "omniglot-py").is_dir()), None)


SHARED = _shared_data()
needs_omniglot = pytest.mark.skipif(SHARED is None, reason="real Omniglot not found: set MMFS_SHARED_DATA to the "
                                                           "folder holding omniglot-py/ (../shared/data)")

# -- the committed protocols and tables -------------------------------------------------------------


def test_every_protocol_loads_and_names_its_published_rows():
    names = reproduce.protocol_names()
    assert {"omniglot_protonet_1shot", "omniglot_protonet_5shot", "omniglot_maml_5w1s", "omniglot_fomaml_5w1s",
            ROW} <= set(names)
    for name in names:
        protocol = reproduce.load_protocol(name)
        assert protocol.evals == [(w, s) for w in protocol.config.eval.ways for s in protocol.config.eval.shots]
        for (way, shot), row in protocol.published.items():
            assert (row["n_way"], row["n_shot"], row["dataset"]) == (way, shot, protocol.config.dataset), name
            if protocol.comparable:  # like-for-like protocols test as the paper did
                assert pd.isna(row["test_episodes"]) or int(row["test_episodes"]) == protocol.config.eval.episodes


def test_leaderboard_rows_are_unique_sourced_and_located():
    board = reproduce.read_leaderboard()
    assert board["id"].is_unique
    assert not board[["dataset", "learner", "backbone", "n_way", "n_shot"]].duplicated().any()
    assert board["source"].notna().all() and board["year"].notna().all() and board["where"].notna().all()
    assert set(board["confirmed"]) <= {"yes", "no"} and "checked_against" in board.columns
    plain = board.set_index("id").loc["miniimagenet-matchingnet-conv4_64-5w1s"]
    assert plain["mean"] == 43.40 and "FCE" not in plain["where"]


def test_protonet_models_give_two_rows_each_and_keep_their_run_id():
    """One training per shot gives the 5-way and 20-way rows; the protocol section is not in the run id,
    so the committed in-progress training of the 1-shot model (run omniglot-seed0-5dbddf6a97) resumes."""
    for shot in (1, 5):
        protocol = reproduce.load_protocol(f"omniglot_protonet_{shot}shot")
        assert protocol.evals == [(5, shot), (20, shot)]
        assert [protocol.row_name(*e) for e in protocol.evals] == [f"omniglot_protonet_{shot}shot/5w{shot}s",
                                                                     f"omniglot_protonet_{shot}shot/20w{shot}s"]
        assert not protocol.comparable and any("20,000" in d for d in protocol.deviations)
    cfg = reproduce.load_protocol("omniglot_protonet_1shot").config
    assert config_hash(cfg) == config_hash(merge(cfg, {"protocol": {}}, "test"))
    assert config_hash(merge(cfg, {"data_root": "/work/shared/data"}, "test")) == "5dbddf6a97"


@pytest.mark.parametrize("name", ["omniglot_maml_5w1s", "omniglot_maml_20w1s", "omniglot_fomaml_5w1s"])
def test_maml_protocols_follow_the_reference_code(name):
    protocol = reproduce.load_protocol(name)
    cfg = protocol.config
    options = cfg.learner_options[cfg.learners[0]]
    way = cfg.eval.ways[0]
    assert options["head"] == "learned" and options["n_way"] == way == cfg.train.way
    assert cfg.train.val_every == 0 and cfg.train.episodes == 60000 and cfg.train.query == 1
    assert (cfg.eval.episodes, cfg.eval.query) == (600, 1)  # cbfinn/maml: NUM_TEST_POINTS, K queries per class
    assert cfg.dataset_options == {"split": "vinyals_trainval"} and not protocol.comparable


def test_readme_is_regenerated_byte_for_byte():
    table = reproduced.read_reproduced()
    assert (REPO / "results" / "README.md").read_text() == reproduced.readme_text(table)
    assert (REPO / "results" / "reproduced.csv").read_text() == table.to_csv(index=False)
    assert "meets 0.5-point goal" in reproduced.readme_text(table)


def test_committed_row_matches_its_episodes_and_says_it_is_not_comparable():
    row = reproduced.read_reproduced().set_index("name").loc[ROW]
    committed = reproduce.committed_episodes(reproduce.load_protocol(ROW))["5w1s"]
    mean, ci = mean_ci95(np.asarray(committed["accuracy"]))
    assert len(committed["accuracy"]) == row["test_episodes"] == 1000
    assert round(100 * mean, 2) == row["mean"] and round(100 * ci, 2) == row["ci95"]
    assert committed["manifest_sha256"] == row["manifest_sha256"]
    assert str(row["comparable"]) == "False" and "2,000 training episodes" in row["protocol_deviations"]
    assert str(row["within_half_point"]) == str(abs(row["difference"]) <= 0.5)
    assert not str(row["git_commit"]).endswith("-dirty")
    assert FIXTURE not in set(reproduced.read_reproduced()["name"])


def test_migration_drops_dirty_rows_and_takes_deviations_from_the_config(tmp_path):
    old = ("name,benchmark,reference,label,comparable,learner,n_way,n_shot,n_query,published_mean,published_ci95,mean,"
           "ci95,difference,published_in_ci,test_episodes,training,hardware,train_wall_time_s,eval_wall_time_s,"
           "manifest_sha256,dataset_fingerprint,checkpoint_sha256,git_commit,date,command\n"
           f"{ROW},omniglot,r,old label,True,protonet,5,1,15,98.8,,98.3,0.2,-0.5,False,1000,t,h,1.0,,m,d,c,abc,2026-11-27,x\n"
           f"{FIXTURE},omniglot,r,old,True,protonet,5,1,15,98.8,,95.6,0.3,-3.2,False,1000,t,h,1.0,,m,d,c,abc-dirty,"
           "2026-11-27,x\n")
    (tmp_path / "reproduced.csv").write_text(old)
    table = reproduced.read_reproduced(tmp_path)
    assert list(table.columns) == reproduced.REPRODUCED_COLUMNS and list(table["name"]) == [ROW]
    row = table.iloc[0]
    assert not row["comparable"] and row["within_half_point"] and "2,000" in row["protocol_deviations"]


# -- protocols of our own, trained on the built-in synthetic data ---------------------------------------

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


@pytest.fixture
def clean(monkeypatch):
    """A clean tree at commit ``c0ffee`` (tests run in checkouts with uncommitted changes)."""
    state = {"dirty": []}
    monkeypatch.setattr(reproduced, "dirty_paths", lambda root=None: list(state["dirty"]))
    monkeypatch.setattr(reproduced, "head_commit", lambda root=None: "c0ffee")
    monkeypatch.setattr(reproduce_eval, "dirty_paths", lambda root=None: list(state["dirty"]))
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
    assert "last iterate" in table.iloc[0]["training"] and table.iloc[0]["train_wall_time_s"] > 0
    assert (results / "checkpoints" / "tiny.pt").exists()
    training = results / "training"  # the default output folder: emptied of this run once it is final
    assert training.is_dir() and not [p for p in training.iterdir() if p.name != "manifests"]
    assert (results / "README.md").read_text() == reproduced.readme_text(reproduced.read_reproduced(results))


def test_training_resumes_from_in_progress_checkpoints_in_results_training(tmp_path, clean):
    """A run cut off (SIGKILL after step 2) leaves results/training/<run_id>/checkpoints/*.train.pt;
    ``reproduce NAME`` resumes there, and the row says so."""
    protocol = _protocol(tmp_path)
    script = ("import sys; from pathlib import Path; from benchmark import reproduce, reproduce_train, reproduced;"
              "reproduced.dirty_paths = lambda root=None: []; reproduced.head_commit = lambda root=None: 'c0ffee';"
              "p = reproduce.load_protocol('tiny', Path(sys.argv[1]), Path(sys.argv[2]));"
              "reproduce_train.train_protocol(p, None, threads=1, results_dir=Path(sys.argv[2]))")
    env = {**os.environ, "MMFS_TEST_KILL_AT_STEP": "2", "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "configs"), str(tmp_path / "results")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert list((tmp_path / "results" / "training").glob("*/checkpoints/*.train.pt"))
    reproduce_train.train_protocol(protocol, None, threads=1, results_dir=tmp_path / "results")
    row = reproduced.read_reproduced(tmp_path / "results").iloc[0]
    assert "resumed from step(s) 2" in row["training"] and "1 interrupted session" in row["training"]


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
    monkeypatch.setattr(reproduced, "dirty_paths", lambda root=None: next(calls, []))
    with pytest.raises(BenchmarkError, match="Commit or stash the changes, then rerun"):
        reproduce_train.train_protocol(protocol, None, threads=1, results_dir=results)
    assert not (results / "reproduced.csv").exists()
    reproduce_train.train_protocol(protocol, None, threads=1, results_dir=results)
    row = reproduced.read_reproduced(results).iloc[0]
    assert "resumed" not in row["training"] and row["train_wall_time_s"] > 0


def test_eval_only_writes_a_check_and_never_rewrites_the_rows(tmp_path, clean):
    protocol, results = _protocol(tmp_path), tmp_path / "results"
    reproduce_train.train_protocol(protocol, None, threads=1, results_dir=results)
    before = {p: (results / p).read_bytes() for p in ("reproduced.csv", "README.md")}
    outcomes = reproduce_eval.evaluate_checkpoint(protocol, None, str(tmp_path / "eval"), threads=1,
                                                  results_dir=results)
    path, equal = reproduce_eval.write_check(protocol, outcomes, "cmd", results_dir=results)
    check = json.loads(path.read_text())
    assert equal and path == results / "checks" / "tiny.json"
    assert check["rows"]["tiny/3w1s"]["episodes"] == 6 and check["rows"]["tiny/3w1s"]["equals_committed_episodes"]
    assert {"git_commit", "date", "hardware", "command"} <= set(check)
    assert all((results / p).read_bytes() == data for p, data in before.items())
    prefix = reproduce_eval.evaluate_checkpoint(protocol, None, str(tmp_path / "eval"), threads=1, test_episodes=2,
                                                results_dir=results)
    assert not prefix[0].full_manifest and reproduce_eval.write_check(protocol, prefix, "cmd", results_dir=results)[1]
    episodes = results / "checkpoints" / "tiny.episodes.json"  # a tampered record is caught
    data = json.loads(episodes.read_text())
    data["evals"]["2w1s"]["accuracy"][0] = -1.0
    episodes.write_text(json.dumps(data))
    assert not reproduce_eval.write_check(protocol, outcomes, "cmd", results_dir=results)[1]


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
    assert reproduced.dirty_paths(repo) == []
    (repo / "code.py").write_text("a = 2\n")
    (repo / "new.py").write_text("")
    (repo / "results" / "leaderboard.csv").write_text("id\n")  # the published numbers are not an output
    assert sorted(reproduced.dirty_paths(repo)) == ["code.py", "new.py", "results/leaderboard.csv"]
    (tmp_path / "plain").mkdir()
    with pytest.raises(BenchmarkError, match="not a git checkout"):
        reproduced.dirty_paths(tmp_path / "plain")


def test_list(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert "omniglot_protonet_1shot/20w1s" in out and ROW in out


# -- the committed checkpoint on the real data --------------------------------------------------------------


@needs_omniglot
def test_eval_only_cli_reproduces_the_committed_episodes_exactly(tmp_path, capsys, monkeypatch):
    """The committed checkpoint, re-evaluated on the first 50 episodes of the same fixed manifest (its
    sha256 checked against the recorded one), gives the committed accuracies exactly; the check goes to
    checks/NAME.json and reproduced.csv is not touched."""
    results = tmp_path / "results"
    (results / "checkpoints").mkdir(parents=True)
    shutil.copy(REPO / "results" / "leaderboard.csv", results)
    for suffix in (".pt", ".episodes.json"):
        shutil.copy(REPO / "results" / "checkpoints" / f"{FIXTURE}{suffix}", results / "checkpoints")
    monkeypatch.setattr(reproduce, "RESULTS_DIR", results)
    code = main(["reproduce", FIXTURE, "--data-root", str(SHARED), "--eval-only", "--test-episodes", "50",
                 "--threads", "1", "--out", str(tmp_path / "eval")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "reproduced exactly: yes" in out and "inside our 95% CI" in out
    check = json.loads((results / "checks" / f"{FIXTURE}.json").read_text())
    assert check["equals_committed_episodes"] and check["rows"][FIXTURE]["episodes"] == 50
    assert not (results / "reproduced.csv").exists()


@pytest.mark.slow
@needs_omniglot
def test_eval_only_full_manifest_gives_the_committed_row(tmp_path):
    protocol = reproduce.load_protocol(ROW)
    outcome, = reproduce_eval.evaluate_checkpoint(protocol, str(SHARED), str(tmp_path), threads=1)
    row = reproduced.read_reproduced().set_index("name").loc[ROW]
    assert outcome.full_manifest
    assert outcome.comparison()["mean"] == row["mean"] and outcome.comparison()["ci95"] == row["ci95"]
