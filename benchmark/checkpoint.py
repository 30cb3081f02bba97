"""Training checkpoints that survive a kill, and the run-folder lock.

A training checkpoint holds everything the training loop needs to continue as
if it had never stopped: model, optimiser and scheduler state, the state of
the numpy generator that draws training episodes, the torch CPU (and CUDA)
generator states, the step, the validation history and the best state so far.
It is written atomically (temporary file, ``fsync``, ``os.replace``) so a kill
leaves either the previous checkpoint or the new one, never half of one, and
it is read back with ``torch.load(weights_only=True)``: only tensors and plain
Python values, no pickled code. Generator states are stored as tensors or
JSON strings for that reason.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.results import atomic_save, write_error
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


# -- generator states as weights_only-safe values -----------------------------------------------
def rng_state(rng: np.random.Generator, device: torch.device | None = None) -> dict[str, Any]:
    """The states of the training-episode generator and of torch's generators.

    Returns:
        ``{"numpy": JSON str, "torch_cpu": uint8 tensor, "torch_cuda": [uint8 tensor] (when used)}``.
    """
    state: dict[str, Any] = {"numpy": json.dumps(rng.bit_generator.state), "torch_cpu": torch.get_rng_state()}
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (the generator in place)."""
    rng.bit_generator.state = json.loads(state["numpy"])
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


# -- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save a training state atomically (see module docstring)."""
    atomic_save(path, lambda f: torch.save({"format": FORMAT_VERSION, **state}, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        BenchmarkError: unreadable, truncated or not a checkpoint of this format.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError...)
        raise BenchmarkError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err)[:200]}; "
                             "delete it (training of that method restarts) or use --no-resume") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise BenchmarkError(f"{path} is not a training checkpoint of this version; delete it or use --no-resume")
    return data


def check_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                     advice: str = "Delete it or use --no-resume to train from scratch") -> None:
    """Check that ``state`` has exactly the keys and shapes of ``module``'s state dict.

    Raises:
        BenchmarkError: names the missing, unexpected or differently shaped entries.
    """
    own = module.state_dict()
    if not isinstance(state, dict):
        raise BenchmarkError(f"{source} does not hold a model state")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        details = []
        if missing:
            details.append(f"missing {len(missing)} entries (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected entries (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            details.append(f"{len(shapes)} of other shape (e.g. {'; '.join(shapes[:3])})")
        raise BenchmarkError(f"{source} was saved from another architecture: {', '.join(details)}. {advice}")


# -- the run-folder lock ------------------------------------------------------------------------
class RunLock:
    """An exclusive ``fcntl.flock`` on ``<run_dir>/.lock``, held while a run writes its folder.

    The lock is released by the kernel when the process dies, so a killed run
    never leaves a stale lock behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(self.path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BenchmarkError(
                f"another process (pid {holder}) is running this same configuration into {self.path.parent}; "
                "wait for it to finish (rerunning afterwards continues or reuses its results) "
                "or choose another --out"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# -- self-describing model files ----------------------------------------------------------------
MODEL_FORMAT = "fewshot-benchmark-model"
MODEL_VERSION = 1


def save_model(path: Path, learner: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Save a trained learner with everything needed to rebuild and feed it (atomically).

    The file is ``{"format", "version", "meta": JSON str, "state_dict"}``: tensors and plain values
    only, so :func:`read_model` loads it with ``torch.load(weights_only=True)``. ``meta`` is built by
    :func:`benchmark.savedmodel.describe`.
    """
    model = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "meta": json.dumps(meta, sort_keys=True),
             "state_dict": learner.state_dict()}
    atomic_save(Path(path), lambda f: torch.save(model, f))


def read_model(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a model file safely (``weights_only=True``): its state dict and its metadata.

    Returns:
        ``(state_dict, meta)``; ``meta`` is ``None`` for a bare state dict (older checkpoints).

    Raises:
        BenchmarkError: a missing or unreadable file, or one that holds no model state.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError...)
        raise BenchmarkError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err)[:200]} "
                             "(only tensors and plain values are loaded: weights_only=True)") from None
    if isinstance(data, dict) and data.get("format") == MODEL_FORMAT:
        if data.get("version") != MODEL_VERSION:
            raise BenchmarkError(f"{path} is a model file of version {data.get('version')}; this code reads "
                                 f"version {MODEL_VERSION}")
        return data["state_dict"], json.loads(data["meta"])
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data, None
    raise BenchmarkError(f"{path} holds no model state (neither a model file of this suite nor a state dict)")
