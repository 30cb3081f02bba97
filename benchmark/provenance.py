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


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return result.stdout.strip() + ("-dirty" if dirty else "") if result.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
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
