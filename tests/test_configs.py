"""Every shipped experiment file loads, validates, and names options its components accept."""
from __future__ import annotations

from pathlib import Path

import pytest

import learners  # noqa: F401
from benchmark.config import ExperimentConfig, component_config, load_yaml, merge
from benchmark.methods import check_names, check_options, expand_methods
from learners.registry import LEARNERS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "benchmark" / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    """Every experiment file is packaged (setup.cfg's package data) and reachable as users name it: a
    reproduction protocol by ``reproduce NAME`` with its reference row in results/leaderboard.csv."""
    import configparser
    import fnmatch

    from benchmark import reproduce

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    globs = [g.strip() for g in setup["options.package_data"]["benchmark"].split(",")]
    assert CONFIGS
    for path in CONFIGS:
        relative = path.relative_to(ROOT / "benchmark").as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs), f"{relative} is not in setup.cfg's package data"
        if "protocol" in load_yaml(path):
            protocol = reproduce.load_protocol(path.stem)  # checks every reference against leaderboard.csv
            evaluated = {(w, s) for w in protocol.config.eval.ways for s in protocol.config.eval.shots}
            assert set(protocol.published) == evaluated and all(row["id"] for row in protocol.published.values())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_its_options_are_valid(path):
    cfg = merge(ExperimentConfig(), load_yaml(path), str(path)).validate()
    check_names(cfg)
    check_options(cfg)  # every component's options: learners, fusions, backbone, text encoder, dataset
    assert expand_methods(cfg)
    for name, options in cfg.learner_options.items():
        component_config(LEARNERS.get(name).Config, options, f"{path.name}: learner_options.{name}")
