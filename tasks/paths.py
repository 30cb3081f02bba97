"""Where the suite caches generated datasets, decoded images and frozen-encoder features."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MMFS_CACHE_DIR`` if set, else ``~/.cache/mmfewshot``."""
    return Path(os.environ.get("MMFS_CACHE_DIR", Path.home() / ".cache" / "mmfewshot"))
