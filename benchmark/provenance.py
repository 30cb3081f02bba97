"""Provenance recorded with every run: package versions, git commit, device, peak memory."""
from __future__ import annotations

import platform
import resource
import subprocess
from pathlib import Path

import torch

from tasks.errors import BenchmarkError


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "pandas", "transformers", "datasets", "scipy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


CPUINFO = Path("/proc/cpuinfo")


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers: figures depend on them.

    ``AMD EPYC (family 25, model 17)`` from ``/proc/cpuinfo``: a virtual machine may name only the
    vendor's line, and hosts of one name differ in speed and in float rounding. Without them (no
    ``/proc/cpuinfo``: what ``platform`` knows) the record says so: ``arm (family/model unknown)``;
    Windows' processor string names them itself (``Intel64 Family 6 Model 158 ...``).
    """
    fields = {}
    try:
        for line in CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip() and fields:
                break  # the first processor only
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name")
    if name and fields.get("cpu family") and fields.get("model"):
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    if "family" in name.lower() and "model" in name.lower():
        return name
    return f"{name} (family/model unknown)"


REPO = Path(__file__).resolve().parent.parent
#: what the suite writes itself (reproductions, their tables and READMEs): changes there are results,
#: not code, and do not make a tree dirty. A run's own ``--out`` folder is added by the caller.
OUTPUT_PATHS = ("results/training/", "results/checkpoints/", "results/checks/", "results/reproduced.csv",
                "results/README.md", "README.md")


def dirty_paths(root: Path = REPO, outputs: tuple[str, ...] = ()) -> list[str]:
    """Uncommitted changes (tracked or untracked, not ignored) outside :data:`OUTPUT_PATHS` and
    ``outputs`` (paths relative to ``root``): the one definition of a dirty tree.

    Raises:
        BenchmarkError: ``root`` is not a git checkout (a recorded number needs a commit to point at).
    """
    try:
        result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "-z"], cwd=root,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        raise BenchmarkError(f"cannot run git in {root} ({err}): a recorded number needs a git checkout") from None
    if result.returncode != 0:
        raise BenchmarkError(f"{root} is not a git checkout ({result.stderr.strip()}): a recorded number "
                             "needs a commit to point at; clone the repository")
    skip = OUTPUT_PATHS + tuple(outputs)
    paths, entries = [], iter(result.stdout.split("\0"))
    for entry in entries:
        if not entry:
            continue
        status, path = entry[:2], entry[3:]
        if "R" in status or "C" in status:
            next(entries, None)  # -z: the rename's source follows as its own entry
        if not path.startswith(skip):
            paths.append(path)
    return paths


def head_commit(root: Path = REPO) -> str:
    """The checked-out commit (``unknown`` outside git)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def git_commit(outputs: tuple[str | Path, ...] = (), root: Path = REPO) -> str:
    """The checked-out commit, with ``-dirty`` when :func:`dirty_paths` finds changes (``unknown`` outside git).

    ``outputs``: folders this process writes its results to (a run's ``--out``), which do not count.
    """
    commit = head_commit(root)
    if commit == "unknown":
        return commit
    relative = []
    for out in outputs:
        try:
            relative.append(Path(out).resolve().relative_to(root.resolve()).as_posix().rstrip("/") + "/")
        except ValueError:  # outside the checkout: git status does not see it anyway
            pass
    try:
        return commit + ("-dirty" if dirty_paths(root, tuple(relative)) else "")
    except BenchmarkError:
        return "unknown"


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchmarkError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BenchmarkError(f"--device {name} was asked for but MPS is not available here; use --device cpu")
    return device


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
