"""Shared fixtures: a small built-in dataset generated once per session, in a temporary cache."""
from __future__ import annotations

import os

import pytest

from tasks.datasets.shapes import generate


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
