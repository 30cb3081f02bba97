"""The public Benchmark API that reproduce and evaluate build on: prepare, build_learner, episode_loader, test."""
from __future__ import annotations

import json

import pytest

from benchmark.checkpoint import read_model
from benchmark.cli import build_parser, config_from_args
from benchmark.runner import Benchmark
from tests.conftest import only_run_dir, tiny_args


def test_a_saved_model_tested_again_gives_the_rows_of_its_run(tmp_path):
    args = tiny_args(tmp_path, "--learners", "protonet", "--modalities", "image+text", "--fusions", "attention",
                     steps=2)
    cfg = config_from_args(build_parser().parse_args(args))
    Benchmark(cfg).run()
    rows = [json.loads(line) for line in (only_run_dir(tmp_path) / "rows.jsonl").read_text().splitlines()]

    bench = Benchmark(cfg)
    with pytest.raises(RuntimeError, match="prepare"):
        bench.build_learner(bench.methods[0])
    assert bench.prepare() is bench and bench.prepare() is bench  # idempotent
    method = bench.methods[0]
    learner = bench.build_learner(method)
    state, _ = read_model(bench.run_dir / "checkpoints" / f"{method.slug}.pt")
    learner.load_state_dict(state)
    assert bench.episode_loader(learner).setting == bench.setting
    assert bench.test(learner, method) == rows
    assert set(bench.test_manifests) == {(5, 1)}
