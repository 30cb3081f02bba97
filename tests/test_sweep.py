"""Sweeps: local and Ray executors write the same rows; killed drivers resume; failed cells are kept apart."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.methods import parse_method
from benchmark.metrics import METRICS
from benchmark.results import read_rows
from benchmark.sweep import load_sweep
from tasks.errors import BenchmarkError

ROOT = Path(__file__).resolve().parent.parent

TINY_SWEEP = """\
config:
  dataset_options: {n_classes: 40, items_per_class: 20}
  backbone_options: {hidden: 8}
  train: {way: 5, shot: 1, query: 2, episodes: 4, val_every: 3, val_episodes: 3, checkpoint_every: 2}
  eval: {ways: [5], query: 3, episodes: 4}
  threads: 1
methods: [protonet:image, protonet:text]
shots: [1]
seeds: [0, 1]
"""
KEY = ["run_id", "learner", "modalities", "fusion", "seed", "n_way", "n_shot", "episode", "metric"]


def sweep_file(folder: Path, text: str = TINY_SWEEP) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


def statuses(out: Path) -> dict[str, str]:
    return {c["cell"]: c["status"] for c in json.loads((out / "sweep.json").read_text())["cells"]}


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray instance (2 CPUs) for the module; Ray takes tens of seconds to start."""
    ray = pytest.importorskip("ray")
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
                       runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "MMFS_CACHE_DIR": os.environ["MMFS_CACHE_DIR"]}})
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory) -> Path:
    """The 4-cell tiny sweep run in turn in this process (the reference for the Ray runs)."""
    folder = tmp_path_factory.mktemp("local")
    assert main(["sweep", str(sweep_file(folder)), "--out", str(folder / "out")]) == 0
    return folder / "out"


def test_sweep_file_expands_into_cells(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path), str(tmp_path / "out"))
    assert [c.id for c in sweep.cells] == ["shapes/protonet-image-none/1s/seed0", "shapes/protonet-image-none/1s/seed1",
                                           "shapes/protonet-text-none/1s/seed0", "shapes/protonet-text-none/1s/seed1"]
    assert len({c.run_dir for c in sweep.cells}) == 4 and all(c.run_dir.parent == sweep.out for c in sweep.cells)
    assert all(c.config["eval"]["shots"] == [1] and len(c.config["methods"]) == 1 for c in sweep.cells)
    with pytest.raises(BenchmarkError, match="unknown key 'seed'"):
        load_sweep(sweep_file(tmp_path, TINY_SWEEP + "seed: 3\n"))
    with pytest.raises(BenchmarkError, match="shots must be a non-empty list"):
        load_sweep(sweep_file(tmp_path, TINY_SWEEP.replace("shots: [1]", "shots: []")))


def test_ray_sweep_writes_the_rows_of_the_local_sweep(local_sweep, ray_address, tmp_path):
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file(tmp_path)), "--executor", "ray", "--out", str(out)]) == 0
    assert set(statuses(out).values()) == {"finished"}
    pids = {c["pid"] for c in json.loads((out / "sweep.json").read_text())["cells"]}
    assert os.getpid() not in pids  # the cells ran in Ray workers
    rows = read_rows(out / "rows.jsonl")
    assert len(rows) == 4 * 4 * len(METRICS) and not rows.duplicated(KEY).any()  # cells x test episodes x metrics
    assert (out / "rows.jsonl").read_bytes() == (local_sweep / "rows.jsonl").read_bytes()
    assert (out / "summary.csv").read_bytes() == (local_sweep / "summary.csv").read_bytes()
    assert len(list((out / "manifests").glob("*test*"))) == 2  # one manifest per seed, shared by the methods


@pytest.mark.slow
def test_killed_ray_driver_resumes_without_redoing_cells(ray_address, tmp_path):
    # cells long enough (40 steps) that the first result kills the driver while others still train
    longer = TINY_SWEEP.replace("episodes: 4, val_every: 3", "episodes: 40, val_every: 20")
    out, path = tmp_path / "out", sweep_file(tmp_path, longer.replace("checkpoint_every: 2", "checkpoint_every: 5"))
    args = [sys.executable, "run_benchmark.py", "sweep", str(path), "--executor", "ray", "--address", ray_address,
            "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(args, cwd=ROOT, env={**env, "MMFS_TEST_KILL_SWEEP_AFTER": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    sweep = load_sweep(path, str(out))
    finished = {c.id: c.run_dir / "checkpoints" / f"{parse_method(c.config['methods'][0]).slug}.pt"
                for c in sweep.cells if c.finished()}
    assert 1 <= len(finished) <= 3  # the first result killed the driver; Ray stopped its running cells
    stamps = {cell: best.stat().st_mtime_ns for cell, best in finished.items()}
    interrupted = [c for c in sweep.cells if list(c.run_dir.glob("checkpoints/*.train.pt"))]

    resumed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(finished)} finished earlier, {4 - len(finished)} to run" in resumed.stderr
    assert {cell: best.stat().st_mtime_ns for cell, best in finished.items()} == stamps  # not redone
    assert set(statuses(out).values()) == {"finished"}
    if interrupted:  # a cell killed with its worker continues from its training checkpoint
        assert "resuming from step" in resumed.stderr
    rows = read_rows(out / "rows.jsonl")
    assert len(rows) == 4 * 4 * len(METRICS) and not rows.duplicated(KEY).any()
    assert rows["run_id"].nunique() == 4


def test_failed_cell_is_reported_and_the_others_kept(tmp_path):
    text = TINY_SWEEP.replace("methods: [protonet:image, protonet:text]", "methods: [protonet:image, maml:image]")
    text = text.replace("seeds: [0, 1]", "seeds: [0]").replace("  threads: 1\n", "  threads: 1\n"
                                                               "  learner_options: {maml: {n_way: 3}}\n")  # fails when it trains
    out, path = tmp_path / "out", sweep_file(tmp_path, text)
    assert main(["sweep", str(path), "--out", str(out)]) == 1
    assert statuses(out) == {"shapes/protonet-image-none/1s/seed0": "finished",
                             "shapes/maml-image-none/1s/seed0": "failed"}
    error = json.loads((out / "sweep.json").read_text())["cells"][1]["error"]
    assert "n_way" in error
    assert set(read_rows(out / "rows.jsonl")["learner"]) == {"protonet"}
    best = load_sweep(path, str(out)).cells[0].run_dir / "checkpoints" / "protonet-image-none.pt"
    stamp = best.stat().st_mtime_ns
    assert main(["sweep", str(path), "--out", str(out)]) == 1  # the failed cell fails again, alone
    assert best.stat().st_mtime_ns == stamp and read_rows(out / "rows.jsonl").shape[0] == 4 * len(METRICS)  # episodes x metrics


@pytest.mark.slow
def test_killed_ray_workers_fail_their_cells_and_resume_on_rerun(local_sweep, tmp_path, caplog):
    """Workers SIGKILLed at step 3 (after the checkpoint of step 2), on the retry too: those cells are
    reported failed, the others finish; a rerun resumes them from step 2 to the uninterrupted rows."""
    out, path = tmp_path / "out", sweep_file(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMFS_TEST_KILL_AT_STEP": "protonet-text-none:3"}
    env.pop("RAY_ADDRESS", None)
    killed = subprocess.run([sys.executable, "run_benchmark.py", "sweep", str(path), "--executor", "ray", "--num-cpus",
                             "2", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == 1, killed.stderr[-3000:]
    status = statuses(out)
    assert {c: s for c, s in status.items() if "text" in c} == {
        "shapes/protonet-text-none/1s/seed0": "failed", "shapes/protonet-text-none/1s/seed1": "failed"}
    assert {s for c, s in status.items() if "image" in c} == {"finished"}
    assert "protonet-text-none/1s/seed0: failed:" in killed.stdout  # reported with its error at the end
    caplog.set_level(logging.INFO)
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert "2 finished earlier, 2 to run" in caplog.text and caplog.text.count("resuming from step 2") == 2
    assert (out / "rows.jsonl").read_bytes() == (local_sweep / "rows.jsonl").read_bytes()


def test_executor_errors_say_what_to_do(monkeypatch):
    from benchmark.executors import RayExecutor, make_executor

    with pytest.raises(BenchmarkError, match="--address only applies with --executor ray"):
        make_executor("local", "auto")
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    with pytest.raises(BenchmarkError, match=r"pip install 'mmfewshot-bench\[ray\]'"):
        next(RayExecutor().run(["a cell"]))
