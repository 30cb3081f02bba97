"""Runs that survive: resume after a kill, atomic results, locks, and clear errors for bad input."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.checkpoint import RunLock, load_checkpoint, read_model, save_checkpoint
from benchmark.metrics import METRICS
from benchmark.cli import config_from_args, build_parser, main
from benchmark.results import read_rows
from benchmark.runner import Benchmark
from tasks.errors import BenchmarkError
from tests.conftest import TINY_ONE_PROTOCOL, only_run_dir, tiny_args

ROOT = Path(__file__).resolve().parent.parent

def run_cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "run_benchmark.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=240)


def files_of(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in ("rows.jsonl", "summary.csv")}


# -- (1) kill a training run, resume it, get exactly the uninterrupted numbers --------------------
@pytest.mark.slow
def test_killed_training_resumes_to_identical_numbers(tmp_path):
    args = ["--learners", "protonet", "--modalities", "image+text", "--fusions", "concat"]
    clean = run_cli(tiny_args(tmp_path / "clean", *args))
    assert clean.returncode == 0, clean.stderr

    out = tmp_path / "killed"
    killed = run_cli(tiny_args(out, *args), env={"MMFS_TEST_KILL_AT_STEP": "5"})  # between checkpoints 4 and 6
    assert killed.returncode == -signal.SIGKILL
    folder = only_run_dir(out)
    state = load_checkpoint(folder / "checkpoints" / "protonet-image+text-concat.train.pt")
    assert state["step"] == 4
    assert not (folder / "rows.jsonl").exists()

    resumed = run_cli(tiny_args(out, *args))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step 4" in resumed.stderr
    assert files_of(folder) == files_of(only_run_dir(tmp_path / "clean"))  # bit-identical rows and summary
    assert not (folder / "checkpoints" / "protonet-image+text-concat.train.pt").exists()
    clean_best = read_model(only_run_dir(tmp_path / "clean") / "checkpoints" / "protonet-image+text-concat.pt")[0]
    resumed_best = read_model(folder / "checkpoints" / "protonet-image+text-concat.pt")[0]
    assert clean_best.keys() == resumed_best.keys()
    assert all(torch.equal(clean_best[k], resumed_best[k]) for k in clean_best)


# -- (2) a killed sweep resumes without recomputing or duplicating finished cells ----------------
@pytest.mark.slow
def test_killed_sweep_skips_finished_cells(tmp_path):
    args = ["--learners", "protonet", "--modalities", "image,text"]
    clean = run_cli(tiny_args(tmp_path / "clean", *args, steps=4))
    assert clean.returncode == 0, clean.stderr

    out = tmp_path / "sweep"
    killed = run_cli(tiny_args(out, *args, steps=4), env={"MMFS_TEST_KILL_AT_STEP": "protonet-text-none:3"})
    assert killed.returncode == -signal.SIGKILL
    folder = only_run_dir(out)
    first = read_rows(folder / "rows.jsonl")
    assert set(first["modalities"]) == {"image"}
    best = folder / "checkpoints" / "protonet-image-none.pt"
    stamp = best.stat().st_mtime_ns

    resumed = run_cli(tiny_args(out, *args, steps=4))
    assert resumed.returncode == 0, resumed.stderr
    assert "protonet[image]: already in" in resumed.stderr
    assert best.stat().st_mtime_ns == stamp  # not retrained
    rows = read_rows(folder / "rows.jsonl")
    assert not rows.duplicated(["learner", "modalities", "fusion", "n_way", "n_shot", "episode", "metric"]).any()
    assert files_of(folder) == files_of(only_run_dir(tmp_path / "clean"))

    again = run_cli(tiny_args(out, *args, steps=4))  # a finished run: nothing recomputed, nothing added
    assert again.returncode == 0 and (folder / "rows.jsonl").read_bytes() == files_of(folder)["rows.jsonl"]


@pytest.mark.slow
def test_concurrent_runs_into_one_out_dir(tmp_path):
    """Two identical runs and a different one at once: no corruption, no duplicated cells."""
    args = ["--learners", "protonet", "--modalities", "image"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "run_benchmark.py", *tiny_args(tmp_path, *args, "--seed", seed)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in ("0", "0", "1")]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    assert results[2][0] == 0, results[2][1]
    codes = sorted(code for code, _ in results[:2])
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        assert any("another process (pid" in err for _, err in results[:2])
    for folder in (p for p in tmp_path.iterdir() if p.name != "manifests"):
        rows = read_rows(folder / "rows.jsonl")
        assert len(rows) == 4 * len(METRICS) and not rows.duplicated(["episode", "metric"]).any()


# -- in-process runs: NaN, lock, checkpoints, full disk ------------------------------------------
def test_same_seed_same_numbers_in_process(tmp_path):
    args = ["--learners", "protonet", "--modalities", "image"]
    assert main(tiny_args(tmp_path / "a", *args, steps=4)) == 0
    assert main(tiny_args(tmp_path / "b", *args, steps=4)) == 0
    assert files_of(only_run_dir(tmp_path / "a")) == files_of(only_run_dir(tmp_path / "b"))


def test_nan_loss_names_step_learner_and_last_loss(tmp_path, monkeypatch, capsys):
    from learners.protonet import ProtoNet

    calls = {"n": 0}
    real = ProtoNet.loss

    def loss(self, episodes):
        calls["n"] += 1
        value = real(self, episodes)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(ProtoNet, "loss", loss)
    assert main(tiny_args(tmp_path, "--learners", "protonet", "--modalities", "image")) == 2
    err = capsys.readouterr().err
    assert "protonet[image]: the training loss became nan at step 5 (last finite loss " in err
    assert "the last good checkpoint (step 4) is kept" in err and "Traceback" not in err
    assert load_checkpoint(only_run_dir(tmp_path) / "checkpoints" / "protonet-image-none.train.pt")["step"] == 4


def test_concurrent_identical_run_is_refused(tmp_path, capsys):
    args = tiny_args(tmp_path, "--learners", "protonet", "--modalities", "image", steps=2)
    bench = Benchmark(config_from_args(build_parser().parse_args(args)))
    with RunLock(bench.run_dir):
        assert main(args) == 2
    err = capsys.readouterr().err
    assert f"another process (pid {os.getpid()}) is running this same configuration" in err
    assert not (bench.run_dir / "rows.jsonl").exists()
    assert main(args) == 0  # the lock is free again


def test_checkpoint_from_another_architecture(tmp_path, capsys):
    args = tiny_args(tmp_path, "--learners", "protonet", "--modalities", "image")
    bench = Benchmark(config_from_args(build_parser().parse_args(args)))
    wide = Benchmark(config_from_args(build_parser().parse_args(
        tiny_args(tmp_path.parent / f"{tmp_path.name}-wide", "--learners", "protonet", "--modalities", "image",
                  "--set", "backbone_options.hidden=16"))))
    wide.prepare()
    model = wide.build_learner(wide.methods[0]).state_dict()
    path = bench.train_checkpoint(bench.methods[0])
    path.parent.mkdir(parents=True)
    save_checkpoint(path, {"method": "x", "step": 2, "model": model, "optimiser": {}, "scheduler": None,
                           "rng": {}, "best": 0.0, "best_state": model, "history": {}, "last_loss": 1.0})
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {path} was saved from another architecture" in err and "of other shape" in err
    assert "--no-resume" in err
    assert main(args + ["--no-resume"]) == 0  # starts over, moving the old state aside
    assert list(bench.run_dir.glob("replaced-*/checkpoints/protonet-image-none.train.pt"))


def test_checkpoints_load_with_weights_only(tmp_path):
    rng = np.random.default_rng(3)
    from benchmark.checkpoint import rng_state, set_rng_state

    path = tmp_path / "c.pt"
    save_checkpoint(path, {"rng": rng_state(rng), "model": {"w": torch.ones(2)}})
    expected = rng.random(3)
    other = np.random.default_rng(99)
    set_rng_state(other, load_checkpoint(path)["rng"])
    assert np.array_equal(other.random(3), expected)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BenchmarkError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_full_disk_keeps_finished_methods(tmp_path, monkeypatch, capsys):
    args = tiny_args(tmp_path, "--learners", "protonet", "--modalities", "image,text", steps=2)
    real_fsync, seen = os.fsync, {"rows": 0}

    def fsync(fd):
        if ".rows.jsonl." in os.readlink(f"/proc/self/fd/{fd}"):
            seen["rows"] += 1
            if seen["rows"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "rows.jsonl: the disk is full" in err and "Traceback" not in err
    folder = only_run_dir(tmp_path)
    rows = read_rows(folder / "rows.jsonl")
    assert set(rows["modalities"]) == {"image"} and len(rows) == 4 * len(METRICS)  # first method intact, whole (4 episodes x metrics)
    assert not list(folder.glob(".*.tmp"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(args) == 0
    assert set(read_rows(folder / "rows.jsonl")["modalities"]) == {"image", "text"}


# -- (3) bad inputs through the CLI ------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    """An image folder without captions, an empty one, one with a corrupt image, a partial Omniglot."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folders")
    rng = np.random.default_rng(0)
    for c in range(10):
        d = root / "good" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (root / "empty").mkdir()
    for c in range(3):
        d = root / "corrupt" / f"class{c}"
        d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / "0.png")
    (root / "corrupt" / "class1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for folder, alphabet in (("images_background", "Alpha"), ("images_evaluation", "Beta")):
        d = root / "omniglot" / folder / alphabet / "character01"
        d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(d / "0.png")
    (root / "a_file").write_text("not a folder")
    return root


FOLDER_TINY = ["--set", "dataset_options.image_size=16", "--set", "train.way=2", "--set", "train.shot=1",
               "--set", "train.query=1", "--set", "train.val_way=2", "--set", "train.val_query=1",
               "--set", "train.val_episodes=2", "--ways", "2", "--shots", "1", "--queries", "1",
               "--test-episodes", "2", "--train-episodes", "2", "--set", "backbone_options.hidden=8"]

BAD_INPUTS = [
    ("unknown key", ["--set", "train.lrr=0.1"], "unknown key 'lrr'. Did you mean 'lr'?"),
    ("wrong type", ["--set", "train.episodes=many"], "train: episodes: expected an integer, got 'many'"),
    ("n_shot 0", ["--shots", "0"], "eval.shots=0 is out of range: it must be >= 1"),
    ("negative lr", ["--set", "train.lr=-0.1"], "train.lr=-0.1 is out of range: it must be > 0"),
    ("negative checkpoint interval", ["--set", "train.checkpoint_every=-1"], "train.checkpoint_every=-1 is out"),
    ("unknown learner", ["--learners", "protonets"], "Did you mean 'protonet'"),
    ("missing dataset folder", ["--dataset", "imagetext_folder", "--data-root", "{root}/nope"],
     "{root}/nope does not exist"),
    ("empty dataset folder", ["--dataset", "imagetext_folder", "--data-root", "{root}/empty"],
     "imagetext_folder: no images found in {root}/empty"),
    ("corrupt image", ["--dataset", "imagetext_folder", "--data-root", "{root}/corrupt"],
     "cannot decode image {root}/corrupt/class1/broken.png"),
    ("split list names classes not on disk", ["--dataset", "omniglot", "--data-root", "{root}/omniglot"],
     "omniglot: the split list"),
    ("N-way above the classes of a split", ["--ways", "11"],
     "--ways=11 is larger than the 10 classes of the 'test' split"),
    ("K+Q above the items of a class", ["--shots", "10", "--queries", "11"],
     "--shots + --queries = 10 + 11 = 21 exceeds the items"),
    ("missing modality (captions)", ["--dataset", "imagetext_folder", "--data-root", "{root}/good",
                                     "--modalities", "text"], "has no instance-level text, and every requested method needs it"),
    ("missing modality (class text)", ["--dataset", "imagetext_folder", "--data-root", "{root}/good",
                                       "--learners", "am3", "--modalities", "image",
                                       "--set", "eval.support_modalities=image", "--query-modalities", "image"],
     "learner 'am3' needs class-level text, which dataset 'imagetext_folder' does not have"),
    ("image too small for the backbone", ["--dataset", "imagetext_folder", "--data-root", "{root}/good",
                                          "--set", "dataset_options.image_size=8"],
     "backbone conv4 pools four times and needs images of at least 16x16"),
    ("unwritable output directory", ["--out", "{root}/a_file/out"], "cannot write to the output directory"),
    ("bad --set", ["--set", "train.lr"], "expected KEY=VALUE"),
]


@pytest.mark.parametrize("name,args,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_explained(name, args, message, image_folders, tmp_path, capsys):
    args = [a.replace("{root}", str(image_folders)) for a in args]
    message = message.replace("{root}", str(image_folders))
    if "--dataset" in args:  # a folder dataset: no shapes options
        base = ["run", "--out", str(tmp_path / "out"), "--threads", "1", "--learners", "protonet",
                "--modalities", "image", *FOLDER_TINY]
    else:
        base = tiny_args(tmp_path / "out", "--learners", "protonet", "--modalities", "image", steps=2)
    code = main(base + args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err and "internal error" not in err


def test_debug_shows_the_traceback(tmp_path):
    from tasks.errors import BenchmarkError

    with pytest.raises(BenchmarkError, match="unknown key"):
        main(["--debug", *tiny_args(tmp_path, "--set", "train.lrr=1")])


# -- (4) fuzz: random settings run or fail with a BenchmarkError, never an internal error --------
def test_fuzz_settings_never_fail_internally(tmp_path_factory):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import learners  # noqa: F401
    from learners.registry import FUSIONS, LEARNERS

    out = tmp_path_factory.mktemp("fuzz")
    codes: list[int] = []

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(way=st.integers(1, 12), shot=st.integers(0, 12), query=st.integers(0, 12),
           modality=st.sampled_from(["image", "text", "image+text"]),
           query_modalities=st.sampled_from(["image", "image+text", "text"]),
           learner=st.sampled_from(LEARNERS.names()), fusion=st.sampled_from(FUSIONS.names()),
           train_way=st.integers(2, 30))
    def check(way, shot, query, modality, query_modalities, learner, fusion, train_way):
        import io
        from contextlib import redirect_stderr, redirect_stdout

        args = ["run", *TINY_ONE_PROTOCOL, "--train-episodes", "2", "--set", "train.val_every=2", "--set", "train.val_episodes=2",
                "--out", str(out), "--learners", learner, "--modalities", modality, "--fusions", fusion,
                "--ways", str(way), "--shots", str(shot), "--queries", str(query),
                "--query-modalities", query_modalities, "--set", f"train.way={train_way}",
                "--test-episodes", "2"]
        stderr = io.StringIO()
        with redirect_stderr(stderr), redirect_stdout(io.StringIO()):
            code = main(args)
        assert code in (0, 2), f"{args}: exit {code}\n{stderr.getvalue()[-2000:]}"
        assert "Traceback" not in stderr.getvalue()
        codes.append(code)

    check()
    assert 0 in codes and 2 in codes, codes  # both outcomes were exercised
