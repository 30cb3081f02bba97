"""The results store: per-episode rows, summaries and the run's provenance record.

Layout of one run directory::

    <out>/<run_id>/rows.jsonl      one row per (method, way, shot, episode, metric)
    <out>/<run_id>/run.json        resolved config, seeds, manifest hashes, versions, timings
    <out>/<run_id>/summary.csv     generated from rows.jsonl, never edited by hand
    <out>/<run_id>/summary.md
    <out>/<run_id>/checkpoints/    best model of each method (<slug>.pt) and, while a method
                                   trains, its resumable training state (<slug>.train.pt)
    <out>/<run_id>/.lock           held (flock) by the process writing the run folder
    <out>/manifests/               fixed test episodes, shared by every run in <out>

Every file is written atomically (temporary file, ``fsync``, then rename):
``rows.jsonl`` gets all rows of a method at once when the method has finished,
so it always holds whole methods, and an interrupt never loses a finished one.
A write that fails (full disk, read-only folder) raises a :class:`BenchmarkError`
and leaves the previous contents in place.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.errors import BenchmarkError

def write_error(path: Path, err: OSError) -> BenchmarkError:
    """A user-facing error for a failed write (full disk, read-only or unwritable folder)."""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied"}.get(err.errno, err.strerror or str(err))
    return BenchmarkError(
        f"cannot write {path}: {reason}. Files written before are intact (finished methods and the last "
        "checkpoint); free space or choose another --out, then rerun the same command to continue"
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    Raises:
        BenchmarkError: the write failed (e.g. ``ENOSPC``); ``path`` keeps its previous contents.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise write_error(path, err) from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode())


def _complete_lines(path: Path) -> bytes:
    """The contents of ``path`` up to its last newline (drops a partial line left by a crash)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as err:
        raise BenchmarkError(f"cannot read {path}: {err.strerror or err}") from None
    return data[: data.rfind(b"\n") + 1]


def append_rows(path: Path, rows: list[dict]) -> None:
    """Add rows (all rows of one finished method) to a JSONL file, atomically.

    The file is rewritten through a temporary file and ``os.replace``, so it always
    holds whole methods: a kill or a full disk during the write leaves the previous
    rows untouched, and a method is either entirely in the file or not at all.
    Concurrent writers are excluded by the run-folder lock (:class:`benchmark.checkpoint.RunLock`).
    """
    path = Path(path)
    new = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    atomic_write_bytes(path, _complete_lines(path) + new)


def read_rows(path: Path) -> pd.DataFrame:
    """Read rows, ignoring a trailing partial line left by a crash."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pd.DataFrame(rows)


def jsonable(value):
    """Convert numpy scalars and arrays for ``json.dumps``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
