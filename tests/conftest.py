"""Shared fixtures and helpers: a small built-in dataset generated once per session in a temporary
cache, the one set of tiny-run arguments (test_cli, test_reliability, test_speed), and tiny MAML
learners and tasks (test_maml, test_speed). Import helpers with ``from tests.conftest import ...``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from learners import LEARNERS, ModelSpec
from tasks.datasets.shapes import generate
from tasks.episode import Episode, TaskSetting

# the tiny run: the built-in dataset shrunk, a narrow Conv-4, a few short episodes (seconds per method)
TINY = [
    "--set", "dataset_options.n_classes=40", "--set", "dataset_options.items_per_class=20",
    "--set", "backbone_options.hidden=8", "--set", "train.way=5", "--set", "train.val_every=2",
    "--set", "train.val_episodes=3", "--train-episodes", "3", "--test-episodes", "8", "--queries", "5",
    "--threads", "1",
]
# ...narrowed to one protocol (5-way 1-shot, 4 test episodes) with checkpoints, for the kill/resume tests
TINY_ONE_PROTOCOL = [
    *TINY, "--set", "train.shot=1", "--set", "train.query=2", "--test-episodes", "4", "--ways", "5",
    "--shots", "1", "--queries", "3",
]


def tiny_args(out: Path, *extra: str, steps: int = 8) -> list[str]:
    """``run`` on :data:`TINY_ONE_PROTOCOL` for ``steps`` training steps, validating every 3 and
    checkpointing every 2, into ``out``."""
    return ["run", *TINY_ONE_PROTOCOL, "--train-episodes", str(steps), "--set", "train.val_every=3",
            "--set", "train.checkpoint_every=2", "--out", str(out), *extra]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """The command line in this process: ``(exit code, stdout, stderr)``."""
    from benchmark.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def only_run_dir(out: Path) -> Path:
    """The one run folder under ``out`` (besides ``manifests``)."""
    dirs = [d for d in out.iterdir() if d.is_dir() and d.name != "manifests"]
    assert len(dirs) == 1, dirs
    return dirs[0]


IMAGE = TaskSetting(("image",), ("image",))


def make(name: str = "maml", shape=(1, 8, 8), hidden: int = 3, dtype=torch.float64, seed: int = 0, **options):
    """A tiny MAML-family learner (strided Conv-4 of ``hidden`` channels) in ``dtype``."""
    torch.manual_seed(seed)
    options.setdefault("n_way", 3)  # the tasks below are 3-way; the default (learned) head has n_way outputs
    spec = ModelSpec(("image",), IMAGE, shape, backbone_options={"hidden": hidden, "strided": True})
    cls = LEARNERS.get(name)
    return cls(spec, cls.Config(**options)).to(dtype)


def tasks(n_tasks: int, shape=(1, 8, 8), way: int = 3, shot: int = 2, query: int = 2, dtype=torch.float64,
          seed: int = 1) -> list[Episode]:
    """``n_tasks`` random image episodes of ``way`` x (``shot`` + ``query``) items."""
    g = torch.Generator().manual_seed(seed)
    return [Episode(support={"image": torch.randn(way * shot, *shape, generator=g, dtype=dtype)},
                    support_labels=torch.arange(way).repeat_interleave(shot),
                    query={"image": torch.randn(way * query, *shape, generator=g, dtype=dtype)},
                    query_labels=torch.arange(way).repeat_interleave(query), class_ids=torch.arange(way))
            for _ in range(n_tasks)]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep generated data and features out of the user's cache."""
    old = os.environ.get("MMFS_CACHE_DIR")
    os.environ["MMFS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("MMFS_CACHE_DIR", None)
    else:
        os.environ["MMFS_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_dataset():
    """40 classes (25/5/10 train/val/test), 20 items each, 32x32 RGB with captions."""
    return generate(n_classes=40, items_per_class=20, image_size=32, seed=1)
