"""Typed experiment configuration.

An experiment is an :class:`ExperimentConfig`: defaults live here, a YAML file
(``--config``) overrides only what differs, and command-line flags override
both. Unknown keys, wrong types and out-of-range values raise a
:class:`BenchmarkError` that names the key (and the file).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import BenchmarkError
from tasks.options import component_config, from_dict, merge  # noqa: F401  (part of this module's API)


@dataclass
class TrainConfig:
    """Meta-training (episodic) settings."""

    way: int = 20  # classes per training episode (Snell et al. train with more ways than they test)
    shot: int = 5
    query: int = 5
    episodes: int = 600  # optimiser steps; each sees meta_batch episodes
    meta_batch: int = 1
    lr: float = 1e-3
    lr_decay_every: int = 0  # halve the learning rate every this many steps (0: never)
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm (0: off)
    val_every: int = 200  # validate every this many steps (and at the end); 0: no validation, keep the last step
    val_episodes: int = 100
    val_way: int = 5
    val_shot: int = 1
    val_query: int = 15
    checkpoint_every: int = 100  # save a resumable training state every this many steps (0: off)
    # torch.compile backend for the image backbone during meta-training ("inductor"; "": eager).
    # Learners with inner-loop gradients (MAML family) always train eagerly; evaluation is eager.
    compile: str = ""
    # Learners with a class-text gate (AM3's lambda): record it for every class of the train, val and test
    # splits, with how well text-only and image-only prototypes separate each split's classes, every this
    # many steps (0: off) on `gate_episodes` fixed episodes per split (val_way, val_shot, val_query), to
    # <run>/gates/<method>.jsonl. Measurement only: training, results and the run's id are unchanged.
    gate_every: int = 0
    gate_episodes: int = 20


@dataclass
class EvalConfig:
    """Test protocol: every (way, shot) pair is evaluated on its own fixed manifest."""

    ways: list[int] = field(default_factory=lambda: [5])
    shots: list[int] = field(default_factory=lambda: [1, 5])
    query: int = 15
    episodes: int = 600
    support_modalities: str = "image+text"
    query_modalities: str = "image+text"


@dataclass
class ExperimentConfig:
    """One benchmark run: which methods, on which data, under which protocol."""

    dataset: str = "shapes"
    data_root: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    # methods: explicit "learner:modalities[:fusion]" entries (e.g. "protonet:image+text:attention");
    # when empty, every learner x modality setting x fusion (for multimodal settings) is run
    methods: list[str] = field(default_factory=list)
    learners: list[str] = field(default_factory=lambda: ["protonet"])
    modalities: list[str] = field(default_factory=lambda: ["image", "text", "image+text"])
    fusions: list[str] = field(default_factory=lambda: ["concat", "attention"])
    # per-learner changes to `train` (e.g. MAML trains on smaller episodes in a meta-batch)
    train_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    learner_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    fusion_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    backbone: str = "conv4"
    backbone_options: dict[str, Any] = field(default_factory=lambda: {"hidden": 64})
    text_encoder: str = "bow"
    text_encoder_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "cpu"
    out: str = "runs"
    threads: int = 0  # torch CPU threads (0: torch's default)
    note: str = ""  # printed when the run starts and kept in run.json (e.g. why training is short)
    # description of a reproduction protocol (benchmark/configs/*.yaml used by `reproduce`):
    # reference (the results/leaderboard.csv id), label, comparable, notes. Never changes the numbers.
    protocol: dict[str, Any] = field(default_factory=dict)
    # values of this config that were chosen by comparing candidates (key, value, split, evidence), checked
    # by benchmark.selection.check_choices: never on a test split. Never changes the numbers.
    choices: list[dict[str, Any]] = field(default_factory=list)

    def validate(self) -> "ExperimentConfig":
        """Range checks that types alone cannot express; returns self."""
        checks = [
            ("train.way", self.train.way, 2), ("train.shot", self.train.shot, 1),
            ("train.query", self.train.query, 1), ("train.episodes", self.train.episodes, 0),
            ("train.meta_batch", self.train.meta_batch, 1), ("train.val_every", self.train.val_every, 0),
            ("train.val_episodes", self.train.val_episodes, 1), ("train.val_way", self.train.val_way, 2),
            ("train.val_shot", self.train.val_shot, 1), ("train.val_query", self.train.val_query, 1),
            ("train.lr_decay_every", self.train.lr_decay_every, 0),
            ("train.checkpoint_every", self.train.checkpoint_every, 0), ("train.gate_every", self.train.gate_every, 0),
            ("train.gate_episodes", self.train.gate_episodes, 1), ("eval.query", self.eval.query, 1),
            ("eval.episodes", self.eval.episodes, 1), ("threads", self.threads, 0),
        ]
        checks += [("eval.ways", w, 2) for w in self.eval.ways] + [("eval.shots", s, 1) for s in self.eval.shots]
        for key, value, low in checks:
            if value < low:
                raise BenchmarkError(f"config value {key}={value} is out of range: it must be >= {low}")
        for key, value in (("train.lr", self.train.lr),):
            if not 0 < value < float("inf"):
                raise BenchmarkError(f"config value {key}={value} is out of range: it must be > 0")
        for key, value in (("train.weight_decay", self.train.weight_decay), ("train.grad_clip", self.train.grad_clip)):
            if value < 0:
                raise BenchmarkError(f"config value {key}={value} is out of range: it must be >= 0")
        if self.train.compile:
            from benchmark.runtime import check_compile_backend

            check_compile_backend(self.train.compile)
        for key, values in (("learners", self.learners), ("modalities", self.modalities),
                            ("eval.ways", self.eval.ways), ("eval.shots", self.eval.shots)):
            if not values:
                raise BenchmarkError(f"config value {key} is empty; give at least one")
        if self.choices:
            from benchmark.selection import check_choices

            check_choices(self, self.choices, "config")
        return self


DEFAULT_EXPERIMENT = Path(__file__).resolve().parent / "configs" / "default.yaml"
SELECTION_KEYS = ("learners", "modalities", "fusions")


def apply_overrides(cfg: "ExperimentConfig", overrides: dict, where: str) -> "ExperimentConfig":
    """Merge ``overrides`` into ``cfg``; choosing learners/modalities/fusions replaces an explicit method list."""
    if any(k in overrides for k in SELECTION_KEYS) and "methods" not in overrides:
        overrides = {**overrides, "methods": []}
    return merge(cfg, overrides, where)


def default_experiment() -> "ExperimentConfig":
    """The default suite (``benchmark/configs/default.yaml``) that ``run_benchmark.py`` runs with no arguments."""
    return merge(ExperimentConfig(), load_yaml(DEFAULT_EXPERIMENT), f"config file {DEFAULT_EXPERIMENT}")


def train_config(cfg: "ExperimentConfig", learner: str) -> TrainConfig:
    """``cfg.train`` with the learner's ``train_overrides`` applied and range-checked."""
    overrides = cfg.train_overrides.get(learner)
    if not overrides:
        return cfg.train
    shared = sorted(k for k in overrides if k.startswith("val_"))
    if shared:
        raise BenchmarkError(f"train_overrides.{learner}: {shared} cannot differ per learner (every method is "
                             "selected on the same validation episodes); set train.val_* instead")
    train = merge(cfg.train, overrides, f"train_overrides.{learner}")
    dataclasses.replace(cfg, train=train, train_overrides={}).validate()
    return train


def load_yaml(path: str | Path) -> dict:
    """Read an experiment YAML file safely (``yaml.safe_load``)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise BenchmarkError(f"cannot read config file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise BenchmarkError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchmarkError(f"config file {path} must hold a mapping of keys to values")
    return data


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
