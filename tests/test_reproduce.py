"""Reproduction protocols: configs, published rows, and re-evaluating a committed checkpoint exactly."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import reproduce
from benchmark.cli import main
from benchmark.stats import mean_ci95
from tasks.errors import BenchmarkError

REPO = Path(__file__).resolve().parents[1]
COMMITTED = "omniglot_protonet_5w1s_short"


def _shared_data() -> Path | None:
    env = os.environ.get("MMFS_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", REPO.parents[1] / "shared" / "data"]
    return next((c for c in candidates if (c / "omniglot-py").is_dir()), None)


SHARED = _shared_data()
needs_omniglot = pytest.mark.skipif(SHARED is None, reason="real Omniglot not found: set MMFS_SHARED_DATA to the "
                                                           "folder holding omniglot-py/ (../shared/data)")


def test_every_protocol_loads_and_names_a_published_row():
    names = reproduce.protocol_names()
    assert {"omniglot_protonet_5w1s", "omniglot_protonet_20w5s", "omniglot_maml_5w1s", COMMITTED} <= set(names)
    for name in names:
        protocol = reproduce.load_protocol(name)
        row = reproduce.published(protocol)
        way, shot = protocol.way_shot
        assert (row["n_way"], row["n_shot"]) == (way, shot), name
        assert row["dataset"] == protocol.config.dataset, name
        if protocol.comparable:  # like-for-like protocols test on the paper's number of episodes
            assert pd.isna(row["test_episodes"]) or int(row["test_episodes"]) == protocol.config.eval.episodes, name


def test_leaderboard_rows_are_unique_and_sourced():
    board = reproduce.read_leaderboard()
    assert board["id"].is_unique
    assert not board[["dataset", "learner", "backbone", "n_way", "n_shot"]].duplicated().any()
    assert board["source"].notna().all() and board["year"].notna().all()
    assert set(board["confirmed"]) <= {"yes", "no"}


def test_unknown_protocol_suggests_names():
    with pytest.raises(BenchmarkError, match="omniglot_protonet_5w1s"):
        reproduce.load_protocol("omniglot_protonet_5w1")


def test_list(capsys):
    assert main(["reproduce", "--list"]) == 0
    assert COMMITTED in capsys.readouterr().out


def test_committed_row_matches_its_episodes():
    table = reproduce.read_reproduced()
    row = table[table["name"] == COMMITTED].iloc[0]
    committed = reproduce.committed_episodes(reproduce.load_protocol(COMMITTED))
    mean, ci = mean_ci95(np.asarray(committed["accuracy"]))
    assert len(committed["accuracy"]) == row["test_episodes"] == 1000
    assert round(100 * mean, 2) == row["mean"] and round(100 * ci, 2) == row["ci95"]
    assert committed["manifest_sha256"] == row["manifest_sha256"]
    assert (REPO / "results" / "README.md").read_text().count(COMMITTED) >= 1


def test_recorded_rerun_commands_use_the_recorded_thread_count():
    for _, row in reproduce.read_reproduced().iterrows():
        threads = re.search(r"(\d+) thread", row["hardware"]).group(1)
        assert f"--threads {threads}" in row["command"], row["name"]


@needs_omniglot
def test_eval_only_reproduces_the_committed_episodes_exactly(tmp_path, capsys):
    """The committed checkpoint, re-evaluated on the first 100 episodes of the same fixed manifest
    (the manifest's sha256 is checked against the recorded one), gives the committed accuracies exactly."""
    code = main(["reproduce", COMMITTED, "--data-root", str(SHARED), "--eval-only", "--test-episodes", "100",
                 "--threads", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "reproduced exactly: yes" in out and "published" in out and "inside our 95% CI" in out


@pytest.mark.slow
@needs_omniglot
def test_eval_only_full_manifest_gives_the_committed_number(tmp_path):
    protocol = reproduce.load_protocol(COMMITTED)
    outcome = reproduce.evaluate_checkpoint(protocol, str(SHARED), str(tmp_path), threads=1)
    row = reproduce.read_reproduced().set_index("name").loc[COMMITTED]
    assert outcome.full_manifest and reproduce.matches_committed(outcome)
    assert outcome.comparison()["mean"] == row["mean"] and outcome.comparison()["ci95"] == row["ci95"]


def test_eval_only_without_checkpoint_says_how_to_train(tmp_path):
    protocol = reproduce.load_protocol("omniglot_protonet_20w5s")
    with pytest.raises(BenchmarkError, match="train it first"):
        reproduce.evaluate_checkpoint(protocol, None, str(tmp_path))
