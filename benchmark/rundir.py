"""The run folder: its name (config hash, seeds), creating it (or taking over one named under the
earlier scheme), and setting earlier results aside."""
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


def _hashed(cfg: ExperimentConfig) -> dict:
    data = to_dict(cfg)
    for key in ("out", "device", "threads", "protocol", "note", "choices"):
        data.pop(key)
    for key in ("checkpoint_every", "gate_every", "gate_episodes"):  # what is saved or measured on the way,
        data["train"].pop(key)                                         # not what is computed: other runs keep their ids
    # plugin sources and changed learner defaults, only when present: other runs keep their ids
    data.update(code_identity(list(cfg.learners) + [m.split(":")[0] for m in cfg.methods]))
    return data


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def config_hash(cfg: ExperimentConfig, data_fingerprint: str | None = None) -> str:
    """Hash of what determines the numbers: not where they are written, nor where the data sits.

    A config without a data root (the built-in ``shapes``) is hashed as it always was. With a data
    root, the data is named by its contents, ``data_fingerprint`` (:meth:`FewShotDataset.fingerprint`),
    instead of its path: the same data under another path, or on another machine, gives the same id.

    Raises:
        ValueError: a config with a data root and no ``data_fingerprint``.
    """
    data = _hashed(cfg)
    if cfg.data_root is not None:
        if data_fingerprint is None:
            raise ValueError("a config with a data_root is named by its data's contents: pass the dataset's "
                             "fingerprint (Benchmark(cfg).run_id loads the dataset for it)")
        data["data_root"] = {"fingerprint": data_fingerprint}
    return _digest(data)


def run_id(cfg: ExperimentConfig, data_fingerprint: str | None = None) -> str:
    """``<dataset>-seed<seed>-<config hash>`` (see :func:`config_hash`)."""
    return f"{cfg.dataset}-seed{cfg.seed}-{config_hash(cfg, data_fingerprint)}"


def legacy_run_ids(cfg: ExperimentConfig) -> list[str]:
    """The ids the earlier scheme gave this config, with the data root's path in the hash: the path as
    given and made absolute (as ``reproduce`` and sweeps did). Empty without a data root (unchanged ids)."""
    if cfg.data_root is None:
        return []
    data = _hashed(cfg)
    roots = [cfg.data_root, str(Path(cfg.data_root).expanduser().resolve())]
    return list(dict.fromkeys(f"{cfg.dataset}-seed{cfg.seed}-{_digest({**data, 'data_root': r})}" for r in roots))


def adopt_legacy_folder(out: str, run_id: str, legacy_ids: list[str]) -> Path:
    """The run folder of ``run_id`` under ``out``, taking over one named under the earlier scheme.

    When ``out/run_id`` does not exist but a folder of a :func:`legacy_run_ids` id does (an unfinished
    training begun before run ids named the data by its contents), that folder is renamed to
    ``run_id`` and its rows take the new id, so the run resumes there. A folder that another process
    is writing (it holds the run lock) is used in place, under its earlier name. Returns the folder to use.
    """
    from benchmark.checkpoint import RunLock

    target = Path(out) / run_id
    if target.exists():
        return target
    for old_id in legacy_ids:
        old = Path(out) / old_id
        if old_id == run_id or not old.is_dir():
            continue
        try:
            lock = RunLock(old).acquire()
        except BenchmarkError:
            log.warning("run folder %s was named under the earlier run-id scheme (the data root's path in the "
                        "hash; now the data's contents: %s) and another process is writing it: using it in place",
                        old, run_id)
            return old
        try:
            os.rename(old, target)
            _rename_rows(target / "rows.jsonl", old_id, run_id)
        except OSError as err:
            raise BenchmarkError(f"cannot rename the run folder {old} to {target}: {err}") from None
        finally:
            lock.release()
        log.info("run folder %s was named under the earlier run-id scheme (the data root's path in the hash); "
                 "renamed to %s (the data's contents name the run now)", old, target)
        return target
    return target


def _rename_rows(path: Path, old_id: str, new_id: str) -> None:
    """Give the rows of a renamed run folder the run's new id (so they pair with its later rows)."""
    if not path.exists():
        return
    from benchmark.results import atomic_write_text

    lines = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a partial line left by a kill: readers skip it
            continue
        if row.get("run_id") == old_id:
            row["run_id"] = new_id
        lines.append(json.dumps(row, sort_keys=True) + "\n")
    atomic_write_text(path, "".join(lines))


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
