"""Data-parallel meta-training under torchrun (gloo on CPU) computes what one process computes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from benchmark.checkpoint import read_model
from benchmark.distributed import DataParallel
from benchmark.results import read_rows
from tasks.errors import BenchmarkError

ROOT = Path(__file__).resolve().parent.parent

# ProtoNet on meta-batches of 5 episodes: Conv-4's batch-norm running statistics are updated by every
# episode, so they, and the evaluation that uses them, check the combination across ranks too
ARGS = [
    "run", "--set", "dataset_options.n_classes=40", "--set", "dataset_options.items_per_class=20",
    "--set", "backbone_options.hidden=8", "--set", "train.way=5", "--set", "train.shot=1", "--set", "train.query=2",
    "--set", "train.meta_batch=5", "--set", "train.val_episodes=3", "--set", "train.val_every=2",
    "--set", "train.checkpoint_every=2", "--train-episodes", "4", "--test-episodes", "6", "--ways", "5",
    "--shots", "1", "--queries", "3", "--threads", "1", "--learners", "protonet", "--modalities", "image",
]
SLUG = "protonet-image-none"


def run(out: Path, nproc: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command = (launcher if nproc > 1 else [sys.executable]) + ["run_benchmark.py", *ARGS, "--out", str(out)]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)


def run_folder(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if p.is_dir() and p.name != "manifests"]
    return folder


def assert_same_model(a: Path, b: Path) -> None:
    first = read_model(run_folder(a) / "checkpoints" / f"{SLUG}.pt")[0]
    second = read_model(run_folder(b) / "checkpoints" / f"{SLUG}.pt")[0]
    assert first.keys() == second.keys()
    assert any("running_var" in k for k in first)  # the batch-norm statistics are compared too
    for key in first:
        # A convolution bias just before a batch norm has a zero gradient up to rounding, which Adam
        # scales into steps of +-lr: in one process as across ranks these biases (and the running means,
        # which include them) follow rounding noise and change no output. Everything else must agree.
        noise = key.endswith(".0.bias") or key.endswith("running_mean")
        tolerance = {"rtol": 0.0, "atol": 0.05} if noise else {"rtol": 1e-5, "atol": 1e-6}
        assert torch.allclose(first[key].double(), second[key].double(), **tolerance), key
    rows_a, rows_b = read_rows(run_folder(a) / "rows.jsonl"), read_rows(run_folder(b) / "rows.jsonl")
    assert len(rows_a) == len(rows_b) > 0
    assert abs(rows_a["value"].mean() - rows_b["value"].mean()) < 0.02


def test_share_splits_a_meta_batch_in_order():
    items = list(range(5))
    assert [DataParallel(r, 2).share(items) for r in range(2)] == [[0, 1], [2, 3, 4]]
    assert sum((DataParallel(r, 3).share(items) for r in range(3)), []) == items
    assert DataParallel().share(items) == items
    with pytest.raises(BenchmarkError, match="meta_batch=2 is smaller than the 3"):
        DataParallel(0, 3).share([0, 1])


def _tiny_step(dp: DataParallel, out: Path) -> None:
    """One meta-batch of 5 "episodes" through conv + batch norm (its running statistics are updated
    once per episode, as in ProtoNet); saves the gradients and statistics this rank ends with."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    batch = [torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(i)) * (i + 1) for i in range(5)]
    model(batch[0][:2]), model.zero_grad()  # materialise the lazy layer ...
    model[1].reset_running_stats()  # ... without counting that call
    mine = dp.share(batch)
    before = dp.batch_norm_state(model)
    loss = torch.stack([model(x).pow(2).mean() for x in mine]).mean()
    loss.backward()
    dp.average_gradients(list(model.parameters()), len(mine), len(batch))
    dp.sync_batch_norm(before)
    torch.save({"grads": [p.grad for p in model.parameters()], "buffers": dict(model[1].named_buffers()),
                "loss": dp.mean_loss(loss, len(mine), len(batch))}, out)


def _rank(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _tiny_step(DataParallel(rank, world), Path(folder) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # 71 s on the shared 2 cores: two spawned processes import torch
def test_all_reduce_gives_the_single_process_gradients_and_statistics(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _tiny_step(DataParallel(), tmp_path / "single.pt")
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    for rank in range(2):
        ranked = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert abs(ranked["loss"] - single["loss"]) < 1e-6 * abs(single["loss"])
        for a, b in zip(single["grads"], ranked["grads"]):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        for name, value in single["buffers"].items():
            assert torch.allclose(value.double(), ranked["buffers"][name].double(), rtol=1e-5, atol=1e-7), name
    assert int(single["buffers"]["num_batches_tracked"]) == 5


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    result = run(out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_gloo_processes_train_the_single_process_model(single, tmp_path):
    out = tmp_path / "ddp"
    result = run(out, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_model(single, out)
    folder = run_folder(out)
    assert not list(folder.glob(".*.tmp")) and not (folder / "checkpoints" / f"{SLUG}.train.pt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["manifests", folder.name]  # rank 1 wrote no manifests


@pytest.mark.slow
def test_killed_data_parallel_run_resumes_to_the_single_process_model(single, tmp_path):
    out = tmp_path / "ddp"
    killed = run(out, nproc=2, env={"MMFS_TEST_KILL_AT_STEP": "3"})  # after the checkpoint of step 2
    assert killed.returncode != 0
    assert (run_folder(out) / "checkpoints" / f"{SLUG}.train.pt").exists()
    resumed = run(out, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 2" in resumed.stderr
    assert_same_model(single, out)
