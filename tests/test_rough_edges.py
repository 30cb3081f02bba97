"""Rough edges a new user hit (issue 18): each test failed before its fix."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from benchmark import plugins
from benchmark.cli import build_parser, config_from_args, main
from benchmark.config import ExperimentConfig, load_yaml, merge
from benchmark.runner import Benchmark, config_hash
from tasks.errors import BenchmarkError
from tasks.sampler import EpisodeManifest

REPO = Path(__file__).resolve().parents[1]


def test_plain_config_keeps_its_run_id():
    """Covering plugins in the run id leaves runs without plugins where they were. (With a data root the
    data's contents name a run now; the earlier id, by which an unfinished run is found, is unchanged.)"""
    from benchmark.rundir import legacy_run_ids

    cfg = config_from_args(build_parser().parse_args(
        ["run", "--config", "benchmark/configs/omniglot_protonet_1shot.yaml", "--data-root", "/work/shared/data"]))
    assert legacy_run_ids(cfg) == ["omniglot-seed0-5dbddf6a97"]
    with pytest.raises(ValueError, match="fingerprint"):
        config_hash(cfg)  # the path alone no longer names the run


def test_default_suite_keeps_its_run_id():
    """The default suite's id changed twice, on purpose, so that old runs are not reused: its MAML's
    default head became Finn et al.'s learned head (issue 12; 5b865227e7 -> e7981d979d), and MAML's
    query chunks became ``query_chunk_images`` (issue 14; -> c887dea19f), which changes the batched
    path's summation order."""
    from benchmark.config import default_experiment

    assert config_hash(default_experiment()) == "c887dea19f"


def test_run_id_covers_learner_option_defaults(monkeypatch):
    """A changed default (here protonet's temperature) makes a new id; other learners' defaults do not."""
    from learners import LEARNERS
    from learners.protonet import ProtoNet

    cfg = merge(ExperimentConfig(), {"learners": ["protonet"]}, "test")
    other = merge(ExperimentConfig(), {"learners": ["matchingnet"]}, "test")
    before, other_before = config_hash(cfg), config_hash(other)

    @dataclasses.dataclass
    class Config(ProtoNet.Config):
        temperature: float = 20.0

    monkeypatch.setitem(LEARNERS._entries, "protonet", type("ProtoNet20", (ProtoNet,), {"Config": Config}))
    assert config_hash(cfg) != before
    assert config_hash(other) == other_before


def test_run_id_covers_the_plugins_source(tmp_path, monkeypatch):
    cfg = ExperimentConfig()
    plain = config_hash(cfg)
    monkeypatch.setattr(plugins, "LOADED", {})
    plugin = tmp_path / "my_plugin_ab.py"
    plugin.write_text("X = 1\n")
    plugins.load_plugins([str(plugin)])
    assert plugins.LOADED["my_plugin_ab"]["sha256"]
    with_plugin = config_hash(cfg)
    monkeypatch.setitem(plugins.LOADED, "my_plugin_ab", {"path": str(plugin), "sha256": "edited"})
    assert len({plain, with_plugin, config_hash(cfg)}) == 3


def test_plugin_errors_name_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "broken_plugin.py"
    bad.write_text("x = 1\ndef f(:\n")
    assert main(["--plugin", str(bad), "ls", "learners"]) == 2
    err = capsys.readouterr().err
    assert "syntax error in" in err and "broken_plugin.py, line 2" in err
    assert main(["--plugin", str(tmp_path / "absent.py"), "ls", "learners"]) == 2
    assert "file not found" in capsys.readouterr().err


def test_plugin_and_debug_work_without_an_explicit_run(tmp_path, capsys):
    args = build_parser().parse_args(["--learners", "protonet", "--plugin", "p.py", "--debug"])
    assert args.plugin == ["p.py"] and args.debug and args.learners == ["protonet"]
    assert main(["--test-episodes", "2", "--plugin", str(tmp_path / "absent.py")]) == 2  # not an argparse exit
    assert "absent.py: file not found" in capsys.readouterr().err


def test_unknown_learner_hints_at_plugin(tmp_path, capsys):
    assert main(["--learners", "my_own_learner", "--out", str(tmp_path)]) == 2
    assert "--plugin" in capsys.readouterr().err


def test_short_training_note_only_for_the_default_suite():
    def note(*args):
        return config_from_args(build_parser().parse_args(["run", *args])).note

    assert "SHORT" in note() and "SHORT" in note("--out", "elsewhere", "--threads", "1")
    assert note("--learners", "maml") == "" and note("--train-episodes", "1000") == ""


def test_help_examples_name_files_that_exist():
    from benchmark.cli import COMMANDS

    text = build_parser().format_help() + "".join(c.epilog or "" for c in COMMANDS)
    paths = re.findall(r"((?:benchmark|results)/\S+\.(?:yaml|pt))", text)
    assert "benchmark/configs/omniglot_protonet_1shot.yaml" in paths
    for path in paths:
        assert (REPO / path).exists(), path


def test_failed_run_records_its_error(tmp_path, tiny_dataset):
    cfg = merge(ExperimentConfig(), {"modalities": ["image"], "learners": ["protonet"], "out": str(tmp_path),
                                     "eval": {"ways": [30]}}, "test")  # more ways than the 10 test classes
    bench = Benchmark(cfg, dataset=tiny_dataset)
    with pytest.raises(BenchmarkError):
        bench.run()
    record = json.loads((bench.run_dir / "run.json").read_text())
    assert record["status"] == "failed" and "--ways" in record["error"] and "BenchmarkError" in record["error"]
    assert record["plugins"] == {}


def test_missing_data_fails_before_any_run_folder(tmp_path):
    """Its contents name a run with a data root: without the data there is no run (nor a folder) to record."""
    cfg = merge(ExperimentConfig(), {"dataset": "omniglot", "data_root": str(tmp_path / "nowhere"),
                                     "modalities": ["image"], "out": str(tmp_path / "runs")}, "test")
    with pytest.raises(BenchmarkError, match="omniglot"):
        Benchmark(cfg)
    assert not (tmp_path / "runs").exists()


def test_manifests_of_two_datasets_never_collide(tmp_path, tiny_dataset):
    other = dataclasses.replace(tiny_dataset, images=255 - tiny_dataset.images)  # same name, other contents
    first, p1 = EpisodeManifest.get(tmp_path, tiny_dataset, "test", 5, 1, 2, 3, 0)
    second, p2 = EpisodeManifest.get(tmp_path, other, "test", 5, 1, 2, 3, 0)  # used to be an error
    assert p1 != p2 and tiny_dataset.fingerprint()[:12] in p1.name
    assert EpisodeManifest.get(tmp_path, tiny_dataset, "test", 5, 1, 2, 3, 0)[0].sha256 == first.sha256


def test_manifest_under_the_old_name_is_still_used(tmp_path, tiny_dataset):
    manifest = EpisodeManifest.generate(tiny_dataset, "test", 5, 1, 2, 3, 0)
    legacy = manifest.save(tmp_path / "shapes-test-5w1s2q-3ep-seed0.json")
    found, path = EpisodeManifest.get(tmp_path, tiny_dataset, "test", 5, 1, 2, 3, 0)
    assert path == legacy and found.sha256 == manifest.sha256


def test_manifest_with_classes_outside_its_split_is_refused(tmp_path, tiny_dataset):
    manifest = EpisodeManifest.generate(tiny_dataset, "train", 5, 1, 2, 3, 0)
    forged = dataclasses.replace(manifest, split="test")  # training classes under a test name
    _, path = EpisodeManifest.get(tmp_path, tiny_dataset, "test", 5, 1, 2, 3, 0)
    forged.save(path)
    with pytest.raises(BenchmarkError, match="outside the 'test' split"):
        EpisodeManifest.get(tmp_path, tiny_dataset, "test", 5, 1, 2, 3, 0)
