"""The per-step training log: one line per step, validation points, continued without duplicates."""
from __future__ import annotations

import signal

import pytest

from benchmark.trainlog import COLUMNS, TrainLog, read_train_log
from tests.conftest import only_run_dir as run_dir
from tests.conftest import tiny_args
from tests.test_reliability import run_cli


def test_a_resumed_log_continues_without_duplicates(tmp_path):
    path = tmp_path / "train_log" / "m.csv"
    log = TrainLog(path)
    log.start(0)
    for step in range(1, 6):  # a run killed after step 5, its last checkpoint at step 3
        log.write(step, 1.0 / step, 1e-3, {"accuracy": 0.5, "nll": 1.2} if step == 3 else None)
    with open(path, "a") as f:
        f.write("6,0.1")  # a partial line from the kill
    resumed = TrainLog(path)
    resumed.start(3)
    for step in range(4, 9):
        resumed.write(step, 1.0 / step, 5e-4, {"accuracy": 0.6, "nll": 1.0} if step == 8 else None)
    table = read_train_log(path)
    assert list(table.columns) == COLUMNS
    assert table["step"].tolist() == list(range(1, 9))
    assert table["seconds"].is_monotonic_increasing
    assert table["val_accuracy"].notna().tolist() == [s in (3, 8) for s in range(1, 9)]
    assert table.loc[table["step"] == 8, "lr"].item() == pytest.approx(5e-4)
    fresh = TrainLog(path)
    fresh.start(0)  # training from scratch empties the log
    assert read_train_log(path).empty


def test_a_run_writes_every_step_and_its_validation_points(tmp_path):
    done = run_cli(tiny_args(tmp_path, "--learners", "protonet", "--modalities", "image", steps=7))
    assert done.returncode == 0, done.stderr
    table = read_train_log(run_dir(tmp_path) / "train_log" / "protonet-image-none.csv")
    assert table["step"].tolist() == list(range(1, 8))
    assert table.loc[table["val_accuracy"].notna(), "step"].tolist() == [3, 6, 7]  # val_every=3 and the last
    assert (table["lr"] == 0.001).all() and table["loss"].notna().all()


@pytest.mark.slow
def test_a_killed_run_resumes_its_log_without_duplicates(tmp_path):
    args = ["--learners", "protonet", "--modalities", "image"]
    killed = run_cli(tiny_args(tmp_path, *args), env={"MMFS_TEST_KILL_AT_STEP": "5"})  # checkpoint at 4
    assert killed.returncode == -signal.SIGKILL
    path = run_dir(tmp_path) / "train_log" / "protonet-image-none.csv"
    assert read_train_log(path)["step"].tolist() == [1, 2, 3, 4, 5]
    resumed = run_cli(tiny_args(tmp_path, *args))
    assert resumed.returncode == 0, resumed.stderr
    table = read_train_log(path)
    assert table["step"].tolist() == list(range(1, 9))
    assert table["seconds"].is_monotonic_increasing
