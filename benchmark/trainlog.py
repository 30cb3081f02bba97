"""The per-step training log of a method: ``<run>/train_log/<slug>.csv``.

Columns: ``step`` (1-based), ``loss`` (the training loss of that step), ``lr`` (the learning rate the
step used), ``seconds`` (training wall time since the first step, summed over resumed sessions) and,
at validation points only, ``val_accuracy`` / ``val_nll`` (empty elsewhere). One line is appended per step
(the file is closed after each). A resumed run first cuts the log back to the step of its training checkpoint (a
killed run may have logged steps after it, which are computed again), so the finished log holds every
step exactly once.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pandas as pd

from benchmark.results import _complete_lines, atomic_write_bytes, write_error

COLUMNS = ["step", "loss", "lr", "seconds", "val_accuracy", "val_nll"]


class TrainLog:
    """Appends one CSV line per training step (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = 0.0
        self._start = 0.0

    def start(self, resumed_step: int) -> None:
        """Open the log for steps after ``resumed_step`` (0: a fresh start, the log is emptied)."""
        kept = b""
        if resumed_step > 0:
            lines = _complete_lines(self.path).decode().splitlines()[1:]
            rows = [r for r in csv.reader(lines) if r and int(r[0]) <= resumed_step]
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(rows)
            kept = buffer.getvalue().encode()
            self._offset = float(rows[-1][3]) if rows else 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(self.path, err) from None
        atomic_write_bytes(self.path, (",".join(COLUMNS) + "\n").encode() + kept)
        self._start = time.perf_counter()

    def write(self, step: int, loss: float, lr: float, val: dict[str, float] | None = None) -> None:
        """Log one step; ``val``: the validation metrics computed after it (``{"accuracy": ..., "nll": ...}``)."""
        val = val or {}
        seconds = self._offset + time.perf_counter() - self._start
        cells = [step, f"{loss:.6g}", f"{lr:.6g}", f"{seconds:.3f}",
                 "" if "accuracy" not in val else f"{val['accuracy']:.6g}",
                 "" if "nll" not in val else f"{val['nll']:.6g}"]
        try:
            with open(self.path, "a") as f:  # one line per step, on disk before the next step starts
                f.write(",".join(map(str, cells)) + "\n")
        except OSError as err:
            raise write_error(self.path, err) from None


def read_train_log(path: Path) -> pd.DataFrame:
    """A training log as a table (columns :data:`COLUMNS`); a partial last line is ignored."""
    data = _complete_lines(Path(path)).decode()
    if not data:
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(io.StringIO(data))
