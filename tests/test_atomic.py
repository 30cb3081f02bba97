"""The one atomic write (tasks/atomic.py), under injected faults: the old file survives, no temporary is left."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.results import atomic_save, atomic_write_text
from tasks.atomic import atomic_write
from tasks.errors import BenchmarkError

ROOT = Path(__file__).resolve().parents[1]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def old_file(tmp_path) -> Path:
    path = tmp_path / "result.json"
    path.write_text("old contents")
    return path


@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt(),
                                   RuntimeError("cannot pickle")])
def test_a_write_that_fails_half_way_keeps_the_old_file(old_file, fault):
    def write(f):
        f.write(b"half of the new ")
        raise fault

    with pytest.raises(type(fault)):
        atomic_write(old_file, write)
    assert old_file.read_text() == "old contents"
    assert _listing(old_file.parent) == ["result.json"]


def test_a_failed_fsync_or_rename_keeps_the_old_file(old_file, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(BenchmarkError, match=r"cannot write .*result.json: the disk is full"):
        atomic_write_text(old_file, "new contents")
    monkeypatch.undo()

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(BenchmarkError, match="read-only"):
        atomic_save(old_file, lambda f: torch.save({"x": torch.zeros(3)}, f))
    assert old_file.read_text() == "old contents"
    assert _listing(old_file.parent) == ["result.json"]


def test_a_writer_killed_mid_write_leaves_the_old_file_and_its_temporary_is_cleaned_up(old_file):
    code = ("import os, signal, sys; from tasks.atomic import atomic_write\n"
            "def write(f):\n    f.write(b'half'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
            f"atomic_write({str(old_file)!r}, write)\n")
    killed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert killed.returncode == -9
    assert old_file.read_text() == "old contents"
    (left,) = [p for p in old_file.parent.iterdir() if p.name != "result.json"]  # a kill cannot clean up...
    assert re.fullmatch(r"\.result\.json\.\d+\.[0-9a-f]{8}\.tmp", left.name)
    live = old_file.parent / f".result.json.{os.getpid()}.00000000.tmp"  # ...a live writer's is kept
    live.write_bytes(b"in progress")
    atomic_write(old_file, lambda f: np.save(f, np.arange(3)))  # ...and the next write removes the dead one
    assert np.array_equal(np.load(old_file), np.arange(3))
    assert _listing(old_file.parent) == sorted(["result.json", live.name])


def test_every_file_is_written_through_the_one_helper():
    """No module writes a file in place or renames by hand (outside tasks/atomic.py and the run-folder
    probe and --no-resume move, which are not file writes)."""
    allowed = {"benchmark/rundir.py": ("probe.write_text", "os.replace(run_dir",
                                       "os.rename(old, target)"),  # a run folder adopted under its new id
               "benchmark/perf/suite.py": ('open(out, "a")',),  # a writability probe before measuring
               "benchmark/perf/measure.py": ('Path("/proc/self/clear_refs").write_text',),
               # an append-only per-step log (rewriting it atomically each step would cost O(steps^2));
               # a torn last line is cut when a resumed run reopens it
               "benchmark/trainlog.py": ('open(self.path, "a")',)}
    pattern = re.compile(r"os\.replace\(|os\.rename\(|\.write_text\(|\.write_bytes\(|open\([^)]*['\"][wa]b?['\"]"
                         r"|torch\.save\(|np\.save[z]?\(")
    offenders = []
    for path in sorted(p for d in ("benchmark", "tasks", "learners") for p in (ROOT / d).rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            into_helper = "lambda f:" in line  # writes into the file object atomic_write gives it
            if pattern.search(line) and not into_helper and not line.lstrip().startswith(("#", '"', "def ")) \
                    and name != "tasks/atomic.py" and not any(a in line for a in allowed.get(name, ())):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
