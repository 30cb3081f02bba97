"""The seed paper's baseline as a configuration: frozen ResNet-18 + frozen text encoder + attention + linear probe."""
from __future__ import annotations

from pathlib import Path

import torch

from benchmark.checkpoint import read_model
from benchmark.config import ExperimentConfig, load_yaml, merge
from benchmark.methods import check_names
from benchmark.runner import Benchmark

CONFIG = Path(__file__).resolve().parent.parent / "benchmark" / "configs" / "seed_baseline.yaml"


def seed_config(tmp_path) -> ExperimentConfig:
    cfg = merge(ExperimentConfig(), load_yaml(CONFIG), str(CONFIG)).validate()
    check_names(cfg)
    assert (cfg.learners, cfg.fusions, cfg.backbone, cfg.text_encoder) == (
        ["linear_probe"], ["attention"], "resnet18", "minilm")
    assert cfg.backbone_options["pretrained"] is True
    # tests never download: random ResNet weights, the trainable bag-of-words in place of MiniLM, tiny sizes
    return merge(cfg, {
        "backbone_options": {"pretrained": False, "frozen": True, "input_size": 0}, "text_encoder": "bow",
        "dataset_options": {"n_classes": 40, "items_per_class": 20}, "threads": 1, "out": str(tmp_path),
        "train": {"episodes": 2, "way": 5, "val_every": 2, "val_episodes": 2},
        "eval": {"episodes": 2, "shots": [1], "query": 3},
    }, "test overrides")


def test_seed_baseline_runs_and_keeps_the_encoders_frozen(tmp_path):
    bench = Benchmark(seed_config(tmp_path))
    table = bench.run()
    assert set(table["modalities"]) == {"image", "text", "image+text"}
    records = bench.method_records
    assert records["linear_probe-image-none"]["best_val_accuracy"] is None  # nothing trainable: no training
    assert records["linear_probe-image+text-attention"]["best_val_accuracy"] is not None  # the fusion trains
    state = read_model(records["linear_probe-image+text-attention"]["checkpoint"])[0]  # a model file
    torch.manual_seed(bench.seeds["init"])
    initial = bench.build_learner(bench.methods[-1]).state_dict()
    resnet = [k for k in state if k.startswith("encoder.encoders.image.")]
    assert resnet and all(torch.equal(state[k], initial[k]) for k in resnet)  # frozen, batch norm included
    fusion = [k for k in state if k.startswith("encoder.fusion.")]
    assert any(not torch.equal(state[k], initial[k]) for k in fusion)
