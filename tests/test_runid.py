"""Run ids name the data by its contents, not by where it sits (issue 29 item 7): the same data under
another path (relative or absolute spelling, a copy elsewhere) gives the same id, other contents
another one, and a run folder named under the earlier scheme (the data root's path in the hash) is
picked up on resume."""
from __future__ import annotations

import csv
import json
import logging
import shutil

import pytest

from benchmark.checkpoint import RunLock
from benchmark.cli import build_parser, config_from_args
from benchmark.results import read_jsonl
from benchmark.runner import Benchmark
from test_datasets import _user_csv

SMALL = ["--ways", "2", "--shots", "1", "--queries", "2", "--test-episodes", "2", "--train-episodes", "2",
         "--set", "train.way=2", "--set", "train.shot=1", "--set", "train.query=2", "--set", "train.val_way=2",
         "--set", "train.val_query=2", "--set", "train.val_episodes=2"]


def _cfg(root, out, *extra):
    return config_from_args(build_parser().parse_args(
        ["run", "--dataset", "imagetext_folder", "--data-root", str(root), "--learners", "protonet",
         "--modalities", "image", "--out", str(out), "--threads", "1", "--set", "dataset_options.image_size=8",
         "--set", "backbone_options.hidden=4", "--set", "backbone_options.strided=true", *SMALL, *extra]))


@pytest.fixture
def data(tmp_path):
    return _user_csv(tmp_path / "here" / "mine", n_classes=10, per_class=3)


def test_relative_and_absolute_data_root_give_one_run_id(data, tmp_path, monkeypatch):
    absolute = Benchmark(_cfg(data, tmp_path / "runs")).run_id
    monkeypatch.chdir(data.parent)
    assert Benchmark(_cfg("mine", tmp_path / "runs")).run_id == absolute
    monkeypatch.chdir(data)
    assert Benchmark(_cfg(".", tmp_path / "runs")).run_id == absolute


def test_a_copy_of_the_data_elsewhere_gives_the_same_run_id(data, tmp_path):
    copy = shutil.copytree(data, tmp_path / "elsewhere" / "copy")
    assert Benchmark(_cfg(copy, tmp_path / "runs")).run_id == Benchmark(_cfg(data, tmp_path / "runs")).run_id


def test_other_contents_at_the_same_path_give_another_run_id(data, tmp_path):
    before = Benchmark(_cfg(data, tmp_path / "runs")).run_id
    rows = list(csv.DictReader((data / "data.csv").open()))
    rows[0]["caption"] = "another caption"
    with (data / "data.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert Benchmark(_cfg(data, tmp_path / "runs")).run_id != before


def test_the_dataset_is_loaded_once_for_the_id_and_the_run(data, tmp_path, monkeypatch):
    from benchmark import runner

    calls = []
    load = runner.load_dataset
    monkeypatch.setattr(runner, "load_dataset", lambda *a, **k: calls.append(a) or load(*a, **k))
    bench = Benchmark(_cfg(data, tmp_path / "runs"))
    bench.prepare()
    assert len(calls) == 1 and bench.dataset.fingerprint()[:12]


def _legacy_id(cfg) -> str:
    from benchmark.rundir import legacy_run_ids

    return legacy_run_ids(cfg)[0]  # the run's folder as the earlier code named it


def test_a_run_folder_of_the_earlier_scheme_is_renamed_and_resumed(data, tmp_path, caplog):
    cfg = _cfg(data, tmp_path / "runs")
    first = Benchmark(cfg)
    first.run()
    rows = read_jsonl(first.run_dir / "rows.jsonl")
    old = first.run_dir.parent / _legacy_id(cfg)
    assert old != first.run_dir
    first.run_dir.rename(old)  # as the earlier code left it: its rows carry the earlier id
    (old / "rows.jsonl").write_text("".join(json.dumps({**r, "run_id": old.name}, sort_keys=True) + "\n"
                                            for r in rows))
    with caplog.at_level(logging.INFO, logger="benchmark.rundir"):
        again = Benchmark(cfg)
    assert again.run_dir == first.run_dir and not old.exists() and "earlier" in caplog.text
    with caplog.at_level(logging.INFO, logger="benchmark.runner"):
        again.run()
    assert "already in" in caplog.text  # resumed: the finished method is not trained again
    assert read_jsonl(again.run_dir / "rows.jsonl") == rows
    assert {r["run_id"] for r in rows} == {again.run_id}


def test_a_busy_run_folder_of_the_earlier_scheme_is_used_in_place(data, tmp_path):
    cfg = _cfg(data, tmp_path / "runs")
    new = Benchmark(cfg).run_dir
    old = new.parent / _legacy_id(cfg)
    new.rename(old)
    with RunLock(old):  # another process is training in it (e.g. a long run started before the change)
        assert Benchmark(cfg).run_dir == old
    assert not new.exists()


def test_runs_without_a_data_root_keep_their_ids():
    from benchmark.config import default_experiment
    from benchmark.rundir import config_hash, run_id

    cfg = default_experiment()
    assert run_id(cfg) == "shapes-seed0-c887dea19f" == f"shapes-seed0-{config_hash(cfg)}"
