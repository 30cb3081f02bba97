"""Reproduction protocols: configs and published rows, rows that cannot drift, eval-only checks, the README."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import reproduce, reproduce_eval, reproduced
from benchmark.cli import main
from benchmark.config import merge
from benchmark.rundir import config_hash
from benchmark.stats import mean_ci95

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
    fingerprint = "0" * 64  # with a data root, the data's contents name the run
    assert config_hash(merge(cfg, {"data_root": "/work/shared/data"}, "test"), fingerprint) == \
        config_hash(merge(cfg, {"data_root": "/work/shared/data", "protocol": {}}, "test"), fingerprint)


def test_trainings_begun_under_the_earlier_run_ids_are_found():
    """Run folders named when the id hashed the absolute data root (``reproduce`` made it absolute):
    the long MAML training of results/training/omniglot-seed0-c13d3647b4 resumes under the new id."""
    from benchmark.rundir import legacy_run_ids

    for name, old in (("omniglot_protonet_1shot", "omniglot-seed0-5dbddf6a97"),
                      ("omniglot_maml_5w1s_cbfinn", "omniglot-seed0-c13d3647b4")):
        cfg = reproduce._with_runtime(reproduce.load_protocol(name), "/work/shared/data", "results/training", 2, "cpu")
        assert old in legacy_run_ids(cfg)


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
    top = (REPO / "README.md").read_text()
    assert top == reproduced.with_summary(top, table)  # the top README's table is the generated one
    for name in table["name"]:
        assert f"`{name}`" in top


def _committed_records() -> list[dict]:
    """Every committed reproduction record: the rows of reproduced.csv and the eval-only checks."""
    rows = reproduced.read_reproduced().to_dict("records")
    return rows + [json.loads(p.read_text()) for p in sorted((REPO / "results" / "checks").glob("*.json"))]


def test_committed_commands_hold_no_absolute_path():
    """A row's command reruns it in any checkout: the data root as a path relative to the checkout."""
    for record in _committed_records():
        words = record["command"].split()
        root = words[words.index("--data-root") + 1]
        assert not root.startswith(("/", "~")) and "/work/" not in record["command"], record["command"]


def test_recorded_commands_spell_the_data_root_without_a_machines_absolute_path():
    from benchmark.reproduce_eval import eval_command
    from benchmark.reproduce_train import rerun_command

    protocol = reproduce.load_protocol(ROW)
    for data_root, shown in (("../shared/data", "../shared/data"), ("data/./omniglot/", "data/omniglot"),
                             (str(REPO.parent / "shared" / "data"), "../shared/data"),  # beside the checkout
                             (str(REPO / "data"), "data"), ("/mnt/somewhere/data", "DIR"), (None, "DIR")):
        for command in (rerun_command(protocol, data_root, 2, "cpu"), eval_command(protocol, data_root, None, 2)):
            assert f" --data-root {shown} " in command, (data_root, command)


def test_committed_hardware_names_the_cpu_family_and_model():
    """Hosts named "AMD EPYC" differ 2x in speed and in rounding: every CPU record names family and model,
    or says that they were not recorded (rows trained before they were)."""
    for record in _committed_records():
        for part in record["hardware"].split("; "):
            if part.startswith("CPU"):
                assert "family" in part and ("model" in part or "not recorded" in part), record["hardware"]



def test_hardware_names_the_cpu_family_and_model(tmp_path, monkeypatch):
    from benchmark import provenance

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
                    "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\n")
    monkeypatch.setattr(provenance, "CPUINFO", info)
    assert reproduce.hardware("cpu").startswith("CPU AMD EPYC (family 25, model 1), ")
    monkeypatch.setattr(provenance, "CPUINFO", tmp_path / "absent")  # no /proc/cpuinfo (macOS, Windows)
    monkeypatch.setattr(provenance.platform, "processor", lambda: "arm")
    assert reproduce.hardware("cpu").startswith("CPU arm (family/model unknown), ")
    monkeypatch.setattr(provenance.platform, "processor", lambda: "Intel64 Family 6 Model 158 Stepping 10")
    assert provenance.cpu_model() == "Intel64 Family 6 Model 158 Stepping 10"  # Windows names them itself
    from benchmark.reproduce_train import _run_hardware  # a session known only from an earlier run's run.json

    assert _run_hardware({"cpu": "AMD EPYC (family 26, model 2)", "device": "cpu", "torch_threads": 2}) == \
        "CPU AMD EPYC (family 26, model 2), 2 thread(s)"
    assert _run_hardware({"cpu": "AMD EPYC", "device": "cpu", "torch_threads": 1}) == \
        "CPU AMD EPYC (family/model not recorded), 1 thread(s)"


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


def test_committed_checks_hold_the_per_episode_values_they_compared():
    """Every committed check shows what it compared: its per-episode accuracies, from which its mean and CI
    recompute, equal to the committed ones exactly where it says so."""
    paths = sorted((REPO / "results" / "checks").glob("*.json"))
    assert paths
    for path in paths:
        check = json.loads(path.read_text())
        protocol = reproduce.load_protocol(check["protocol"])
        committed = reproduce.committed_episodes(protocol)
        assert check["format"] == 2 and set(check["rows"]) == {protocol.row_name(*e) for e in protocol.evals}
        for way, shot in protocol.evals:
            row, ref = check["rows"][protocol.row_name(way, shot)], committed[f"{way}w{shot}s"]
            mean, ci = mean_ci95(np.asarray(row["accuracy"]))
            assert len(row["accuracy"]) == row["episodes"], path
            assert (round(100 * mean, 2), round(100 * ci, 2)) == (row["mean"], row["ci95"]), path
            assert row["manifest_sha256"] == ref["manifest_sha256"], path
            assert (row["accuracy"] == ref["accuracy"][: row["episodes"]]) == row["equals_committed_episodes"], path


def test_migration_drops_dirty_rows_and_takes_deviations_from_the_config(tmp_path):
    old = ("name,benchmark,reference,label,comparable,learner,n_way,n_shot,n_query,published_mean,published_ci95,mean,"
           "ci95,difference,published_in_ci,test_episodes,training,hardware,train_wall_time_s,eval_wall_time_s,"
           "manifest_sha256,dataset_fingerprint,checkpoint_sha256,git_commit,date,command\n"
           f"{ROW},omniglot,r,old label,True,protonet,5,1,15,98.8,,98.3,0.2,-0.5,False,1000,t,h,1.0,,m,d,c,abc,"
           "2026-11-27,x\n"
           f"{FIXTURE},omniglot,r,old,True,protonet,5,1,15,98.8,,95.6,0.3,-3.2,False,1000,t,h,1.0,,m,d,c,abc-dirty,"
           "2026-11-27,x\n")
    (tmp_path / "reproduced.csv").write_text(old)
    table = reproduced.read_reproduced(tmp_path)
    assert list(table.columns) == reproduced.REPRODUCED_COLUMNS and list(table["name"]) == [ROW]
    row = table.iloc[0]
    assert not row["comparable"] and row["within_half_point"] and "2,000" in row["protocol_deviations"]


def test_list(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert "omniglot_protonet_1shot/20w1s" in out and ROW in out


# -- the committed checkpoint on the real data --------------------------------------------------------------


@needs_omniglot
def test_eval_only_cli_reproduces_the_committed_episodes_exactly(tmp_path, capsys, monkeypatch):
    """The committed checkpoint, re-evaluated on the first 50 episodes of the same fixed manifest (its
    sha256 checked against the recorded one), gives the committed accuracies exactly; the check, with
    those 50 values, goes under --out (not checks/NAME.json) and reproduced.csv is not touched."""
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
    check = json.loads((tmp_path / "eval" / "checks" / f"{FIXTURE}.json").read_text())
    assert check["equals_committed_episodes"] and check["rows"][FIXTURE]["episodes"] == 50
    committed = json.loads((results / "checkpoints" / f"{FIXTURE}.episodes.json").read_text())["accuracy"]
    assert check["rows"][FIXTURE]["accuracy"] == committed[:50]
    assert not (results / "reproduced.csv").exists() and not (results / "checks").exists()


@pytest.mark.slow
@needs_omniglot
def test_eval_only_full_manifest_gives_the_committed_row(tmp_path):
    protocol = reproduce.load_protocol(ROW)
    outcome, = reproduce_eval.evaluate_checkpoint(protocol, str(SHARED), str(tmp_path), threads=1)
    row = reproduced.read_reproduced().set_index("name").loc[ROW]
    assert outcome.full_manifest
    assert outcome.comparison()["mean"] == row["mean"] and outcome.comparison()["ci95"] == row["ci95"]
