"""Every shipped experiment file loads, validates, and names options its components accept."""
from __future__ import annotations

from pathlib import Path

import pytest

import learners  # noqa: F401
from benchmark.config import ExperimentConfig, component_config, load_yaml, merge
from benchmark.methods import check_names, expand_methods
from learners.registry import LEARNERS

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "benchmark" / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_its_options_are_valid(path):
    cfg = merge(ExperimentConfig(), load_yaml(path), str(path)).validate()
    check_names(cfg)
    assert expand_methods(cfg)
    for name, options in cfg.learner_options.items():
        component_config(LEARNERS.get(name).Config, options, f"{path.name}: learner_options.{name}")
