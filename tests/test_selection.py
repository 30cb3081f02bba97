"""Choices are made on validation classes: the chooser, the configs' `choices:` records, `select`, training."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.config import ExperimentConfig, TrainConfig, merge
from benchmark.selection import Selection, check_choices, choose
from benchmark.training import meta_train
from tasks.errors import BenchmarkError
from tasks.sampler import EpisodeManifest, EpisodeSampler


def test_choose_takes_the_best_validation_score_and_refuses_test():
    picked = choose("fusion", {"attention": 0.61, "mean": 0.64, "film": 0.64}, "val", "5w1s val accuracy")
    assert picked.choice == "mean" and picked.split == "val"  # the first of equal scores
    with pytest.raises(BenchmarkError, match="'test' split.*validation classes only"):
        choose("fusion", {"attention": 0.61, "mean": 0.64}, "test", "5w1s test accuracy")
    with pytest.raises(BenchmarkError, match="finite"):
        choose("temperature", {"1": float("nan")}, "val", "x")


def _config_with_choice(tmp_path: Path, chosen: str, split: str, recorded: str | None = None) -> ExperimentConfig:
    evidence = tmp_path / "selection.json"
    Selection("learner_options.classfusion.fusion", split if split != "test" else "val", "c",
              {"attention": 0.5, "mean": 0.6}, recorded or chosen).write(evidence)
    return merge(ExperimentConfig(), {"learner_options": {"classfusion": {"fusion": chosen}}, "choices": [
        {"key": "learner_options.classfusion.fusion", "value": chosen, "split": split, "evidence": "selection.json"}]},
        "test config")


def test_config_choices_are_checked_against_their_evidence(tmp_path):
    good = _config_with_choice(tmp_path, "mean", "val")
    check_choices(good, good.choices, "test config", root=tmp_path)
    on_test = _config_with_choice(tmp_path, "mean", "test")
    with pytest.raises(BenchmarkError, match=r"choices\[0\].*'test' split"):
        check_choices(on_test, on_test.choices, "test config", root=tmp_path)
    drifted = replace(good, learner_options={"classfusion": {"fusion": "attention"}})
    with pytest.raises(BenchmarkError, match="is 'attention' in the config but the choice recorded 'mean'"):
        check_choices(drifted, drifted.choices, "test config", root=tmp_path)
    other = _config_with_choice(tmp_path, "mean", "val", recorded="film")
    with pytest.raises(BenchmarkError, match="chose 'film'"):
        check_choices(other, other.choices, "test config", root=tmp_path)
    with pytest.raises(BenchmarkError, match="does not exist"):
        check_choices(good, good.choices, "test config", root=tmp_path / "elsewhere")


def test_committed_configs_choices_hold():
    """Every protocol and study config with `choices:` loads (validate() checks them against the repo)."""
    from benchmark.config import load_yaml

    configs = Path(__file__).resolve().parents[1] / "benchmark" / "configs"
    with_choices = [p for p in sorted(configs.glob("*.yaml")) if load_yaml(p).get("choices")]
    for path in with_choices:
        merge(ExperimentConfig(), load_yaml(path), str(path)).validate()
    assert with_choices, "the configs whose values were chosen record their choices"


def _run(tmp_path: Path, name: str, temperature, val: float | None) -> Path:
    run_dir = tmp_path / name
    run_dir.mkdir()
    method = {"best_step": 10, "best_val_accuracy": val}
    (run_dir / "run.json").write_text(json.dumps({
        "config": {"learner_options": {"matchingnet": {"temperature": temperature}}},
        "methods": {"matchingnet-image-none": method}, "val_manifest_sha256": "abc", "git_commit": "c0ffee"}))
    return run_dir


def test_select_command_chooses_on_validation_and_names_what_it_needs(tmp_path, capsys):
    runs = [_run(tmp_path, "a", 1, 0.81), _run(tmp_path, "b", 10, 0.93), _run(tmp_path, "c", 30, 0.90)]
    out = tmp_path / "choice.json"
    key = "learner_options.matchingnet.temperature"
    assert main(["select", *map(str, runs), "--key", key, "--out", str(out)]) == 0
    record = Selection.read(out)
    assert record.choice == "10" and record.split == "val" and set(record.scores) == {"1", "10", "30"}
    assert record.evidence["10"]["run"] == "b"
    no_val = _run(tmp_path, "d", 3, None)
    assert main(["select", str(no_val), "--key", key, "--out", str(out)]) == 2
    assert "no validation accuracy" in capsys.readouterr().err
    assert main(["select", str(runs[0]), "--key", "learner_options.maml.head", "--out", str(out)]) == 2
    assert "no value at" in capsys.readouterr().err


def test_training_refuses_to_keep_a_checkpoint_chosen_on_test_episodes(tiny_dataset, tmp_path):
    from benchmark.runner import Benchmark

    cfg = merge(ExperimentConfig(), {"learners": ["protonet"], "modalities": ["image"], "out": str(tmp_path),
                                     "train": {"episodes": 2, "val_every": 1, "val_episodes": 2}}, "test")
    bench = Benchmark(cfg).prepare(tiny_dataset)
    method = bench.methods[0]
    learner = bench.build_learner(method)
    test_episodes = EpisodeManifest.generate(tiny_dataset, "test", 3, 1, 2, 2, seed=0)
    train = TrainConfig(way=3, shot=1, query=2, episodes=2, val_every=1, checkpoint_every=0)
    with pytest.raises(BenchmarkError, match="checkpoint kept.*'test' split"):
        meta_train(learner, method, train, lambda: bench.episode_loader(learner),
                   EpisodeSampler(tiny_dataset, "train", 3, 1, 2), test_episodes, torch.device("cpu"), 0,
                   tmp_path / "ck.pt", resume=False)
