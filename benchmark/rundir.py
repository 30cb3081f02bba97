"""The run folder: its name (config hash, seeds), creating it, and setting earlier results aside."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from benchmark.config import ExperimentConfig, to_dict
from benchmark.runid import code_identity
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)


def config_hash(cfg: ExperimentConfig) -> str:
    """Hash of what determines the numbers (not where they are written)."""
    data = to_dict(cfg)
    for key in ("out", "device", "threads", "protocol", "note"):
        data.pop(key)
    for key in ("checkpoint_every", "gate_every", "gate_episodes"):  # what is saved or measured on the way,
        data["train"].pop(key)                                         # not what is computed: other runs keep their ids
    # plugin sources and changed learner defaults, only when present: other runs keep their ids
    data.update(code_identity(list(cfg.learners) + [m.split(":")[0] for m in cfg.methods]))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def seeds(seed: int) -> dict[str, int]:
    """Independent seeds for episode sampling (manifests), model init and training episodes."""
    children = np.random.SeedSequence(seed).spawn(3)
    return {name: int(c.generate_state(1)[0]) for name, c in zip(("manifest", "init", "train_episodes"), children)}


def prepare_output(out: str, run_id: str) -> Path:
    """Create ``out/run_id`` and check that it is writable."""
    run_dir = Path(out) / run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test.{os.getpid()}"  # per process: concurrent runs may probe at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise BenchmarkError(
            f"cannot write to the output directory {run_dir}: {err.strerror or err}; choose another --out"
        ) from None
    return run_dir


def set_aside_previous(run_dir: Path) -> None:
    """``--no-resume``: move earlier results and checkpoints of this run to ``replaced-<time>/``."""
    names = [n for n in ("rows.jsonl", "summary.csv", "summary.md", "run.json", "checkpoints", "train_log", "gates")
             if (run_dir / n).exists()]
    if not names:
        return
    backup = run_dir / time.strftime("replaced-%Y%m%d-%H%M%S")
    try:
        backup.mkdir()
        for name in names:
            os.replace(run_dir / name, backup / name)
    except OSError as err:
        raise BenchmarkError(f"cannot move earlier results of {run_dir} aside: {err}") from None
    log.info("--no-resume: earlier results of this run moved to %s", backup)
