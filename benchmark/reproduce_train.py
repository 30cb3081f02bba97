"""Train a reproduction protocol and record its rows (see :mod:`benchmark.reproduce`).

The training folder ``results/training/<run_id>/`` keeps ``reproduce.json``: one entry per
``reproduce NAME`` session (commit, hardware, the step it resumed from, its wall time), so a row
says truthfully at which commit(s) and on what its model was trained. Rows are written only when
neither the tree now nor any training session had uncommitted changes.

A protocol longer than the machine allows (MAML's 60,000 meta-iterations on a CPU) can be recorded
part-way with :func:`record_interim` (``reproduce NAME --interim``): rows for the latest in-progress
checkpoint that say how far it was trained, never comparable, replaced once the training finishes.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from benchmark import provenance, reproduced
from benchmark.config import train_config
from benchmark.reproduce import Outcome, Protocol, _with_runtime, checkpoint_path, command_data_root, hardware
from benchmark.reproduced import RESULTS_DIR
from benchmark.results import atomic_write_text, read_rows
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)


def rerun_command(protocol: Protocol, data_root: str | None, threads: int, device: str) -> str:
    """The command that trains the protocol again with these settings (the data root as
    :func:`~benchmark.reproduce.command_data_root` spells it)."""
    return (f"python run_benchmark.py reproduce {protocol.name} --data-root {command_data_root(data_root)} "
            f"--threads {threads}"
            + ("" if device == "cpu" else f" --device {device}"))


def train_protocol(protocol: Protocol, data_root: str | None, out: str | None = None, threads: int = 0,
                   device: str = "cpu", results_dir: Path = RESULTS_DIR) -> list[Outcome]:
    """Train (or resume) the protocol with :class:`Benchmark`, then commit checkpoint and rows.

    Raises:
        BenchmarkError: the tree has (or a training session had) uncommitted changes: the training
            and its model stay in ``results/training/<run_id>/``, no row is written.
    """
    from benchmark.runner import Benchmark

    if threads:
        torch.set_num_threads(threads)
    dirty = provenance.dirty_paths()
    if dirty:
        log.warning("uncommitted changes in %s: this training will run, but its rows cannot be recorded "
                    "(train from a clean checkout, e.g. a git worktree of a commit)", ", ".join(dirty[:5]))
    bench = Benchmark(_with_runtime(protocol, data_root, out or str(results_dir / "training"), threads, device))
    if len(bench.methods) != 1:
        raise BenchmarkError(f"protocol {protocol.name} expands to {len(bench.methods)} methods; it must name one")
    method = bench.methods[0]
    sessions_path = bench.run_dir / "reproduce.json"
    sessions = _open_session(bench, method, device, dirty, sessions_path)
    start = time.perf_counter()
    bench.run()
    if sessions[-1]["trained"]:
        sessions[-1]["wall_time_s"] = round(time.perf_counter() - start, 1)
    atomic_write_text(sessions_path, json.dumps({"sessions": sessions}, indent=2) + "\n")
    table = read_rows(bench.run_dir / "rows.jsonl")
    table = table[(table["metric"] == "accuracy") & (table["learner"] == method.learner)]
    outcomes = []
    for way, shot in protocol.evals:
        rows = table[(table["n_way"] == way) & (table["n_shot"] == shot)].sort_values("episode")
        outcomes.append(Outcome(protocol, way, shot, rows["value"].to_numpy(dtype=np.float64),
                                str(rows["manifest_sha256"].iloc[0])))
    _refuse_if_dirty(protocol, bench.run_dir, sessions)
    record = bench.method_records[method.slug]
    _commit_model(protocol, Path(record["checkpoint"]), outcomes, results_dir)
    command = rerun_command(protocol, data_root, torch.get_num_threads(), device)
    reproduced.upsert(_rows(protocol, outcomes, sessions, bench.dataset.fingerprint(), command, results_dir,
                            record.get("train_wall_time_s")), results_dir)
    shutil.rmtree(bench.run_dir)  # final: the committed checkpoint and rows are the record
    log.info("recorded %d row(s); removed the training folder %s", len(outcomes), bench.run_dir)
    return outcomes


def _open_session(bench, method, device: str, dirty: list[str], path: Path) -> list[dict]:
    """Append this session to ``reproduce.json`` (written before training starts) and return all."""
    from benchmark.checkpoint import load_checkpoint
    from benchmark.runner import finished_methods

    sessions = read_sessions(path)
    previous = bench.run_dir / "run.json"
    if not sessions and previous.exists():  # trained before by `run` (or an older reproduce): its run.json
        run = json.loads(previous.read_text())
        sessions.append({"git_commit": run.get("git_commit", "unknown"), "date": "", "hardware": _run_hardware(run),
                         "resumed_from_step": None, "trained": True, "source": "run.json",
                         "wall_time_s": run.get("methods", {}).get(method.slug, {}).get("wall_time_s")})
    finished = method.slug in finished_methods(bench.run_dir / "rows.jsonl")
    resumed = None
    if not finished and bench.train_checkpoint(method).exists():
        resumed = int(load_checkpoint(bench.train_checkpoint(method))["step"])
    sessions.append({"git_commit": provenance.head_commit() + ("-dirty" if dirty else ""),
                     "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "hardware": hardware(device), "resumed_from_step": resumed, "trained": not finished,
                     "dirty_paths": dirty[:20]})
    atomic_write_text(path, json.dumps({"sessions": sessions}, indent=2) + "\n")
    return sessions


def _run_hardware(run: dict) -> str:
    """The hardware a run.json records (its CPU, family and model, and threads; empty where unknown)."""
    cpu = run.get("cpu")
    if not cpu or not str(run.get("device", "cpu")).startswith("cpu"):
        return ""
    if "family" not in cpu.lower():  # recorded before run.json named them
        cpu += " (family/model not recorded)"
    return f"CPU {cpu}, {run.get('torch_threads', '?')} thread(s)"


def read_sessions(path: Path) -> list[dict]:
    """The sessions recorded in a training folder's ``reproduce.json`` (none if it does not exist)."""
    return json.loads(path.read_text())["sessions"] if path.exists() else []


def _refuse_if_dirty(protocol: Protocol, run_dir: Path, sessions: list[dict]) -> None:
    dirty_now = provenance.dirty_paths()
    dirty_training = [s["git_commit"] for s in sessions if s["trained"] and str(s["git_commit"]).endswith("-dirty")]
    if dirty_training:
        raise BenchmarkError(
            f"{protocol.name}: not recorded: the model was trained with uncommitted changes (commit(s) "
            f"{', '.join(dirty_training)}), so no commit holds the code that produced it. The training and its "
            f"model are kept in {run_dir} (see reproduce.json). To record the rows, commit your changes, delete "
            f"{run_dir} and train again from the clean tree (e.g. in a git worktree of that commit)")
    if dirty_now:
        raise BenchmarkError(
            f"{protocol.name}: not recorded: uncommitted changes in {', '.join(dirty_now[:8])}"
            f"{' ...' if len(dirty_now) > 8 else ''}, so the row's commit would not name this code. The training "
            f"and its model are kept in {run_dir}. Commit or stash the changes, then rerun the same reproduce "
            "command: it finds the finished training and records the rows")


def _commit_model(protocol: Protocol, checkpoint: Path, outcomes: list[Outcome], results_dir: Path) -> None:
    """Copy the final model to ``results/checkpoints/<name>.pt`` with its per-episode accuracies."""
    target = checkpoint_path(protocol, results_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, target)
    evals = {f"{o.way}w{o.shot}s": {"manifest_sha256": o.manifest_sha256, "accuracy": o.accuracies.tolist()}
             for o in outcomes}
    atomic_write_text(target.with_suffix(".episodes.json"), json.dumps({"evals": evals}))


def training_description(protocol: Protocol, sessions: list[dict], record_commit: str,
                         trained_steps: int | None = None) -> str:
    """The ``training`` column: length, stopping rule, and where the sessions differ from the row.

    Args:
        trained_steps: the step of an interim model (``None``: the protocol's whole length).
    """
    cfg = protocol.config
    train = train_config(cfg, cfg.learners[0])
    length = f"{train.episodes}" if trained_steps is None else f"interim: {trained_steps} of {train.episodes}"
    text = (f"{length} steps x {train.meta_batch} {train.way}-way {train.shot}-shot {train.query}-query "
            f"episode(s); " + ("last iterate (no validation)" if not train.val_every else
                               f"best of validation every {train.val_every} steps"))
    trained = [s for s in sessions if s["trained"]]
    resumed = [s["resumed_from_step"] for s in trained if s.get("resumed_from_step")]
    if resumed:
        text += f"; resumed from step(s) {', '.join(map(str, resumed))}"
    commits = list(dict.fromkeys(str(s["git_commit"])[:10] for s in trained))
    if commits and commits != [record_commit[:10]]:
        text += f"; trained at commit(s) {', '.join(commits)}"
    return text


def _rows(protocol: Protocol, outcomes: list[Outcome], sessions: list[dict], fingerprint: str, command: str,
          results_dir: Path, train_wall_time_s: float | None = None, trained_steps: int | None = None) -> list[dict]:
    """The rows of ``reproduced.csv`` for these outcomes.

    Args:
        train_wall_time_s: the training's own record of its time over all sessions (the training
            history's); ``None``: the sum of the sessions' wall times, interrupted ones unknown.
        trained_steps: the step of an interim model (``None``: the whole protocol).
    """
    commit = provenance.head_commit()
    checkpoint = checkpoint_path(protocol, results_dir)
    trained = [s for s in sessions if s["trained"]]
    walls = [s.get("wall_time_s") for s in trained]
    training = training_description(protocol, sessions, commit, trained_steps)
    if train_wall_time_s is not None:
        walls = [train_wall_time_s]
    elif any(w is None for w in walls):
        training += f"; wall time excludes {sum(w is None for w in walls)} interrupted session(s)"
    common = {
        "protocol": protocol.name, "benchmark": protocol.config.dataset, "label": protocol.label,
        "comparable": protocol.comparable, "protocol_deviations": "; ".join(protocol.deviations),
        "learner": protocol.config.learners[0], "n_query": protocol.config.eval.query, "training": training,
        "hardware": "; ".join(dict.fromkeys(s["hardware"] or "unknown (an earlier run)" for s in trained)),
        "train_wall_time_s": round(sum(w for w in walls if w is not None), 1),
        "dataset_fingerprint": fingerprint, "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "git_commit": commit, "date": datetime.date.today().isoformat(), "command": command,
    }
    return [{**common, "name": o.name, "reference": o.published["id"], "n_way": o.way, "n_shot": o.shot,
             **o.comparison(), "test_episodes": len(o.accuracies), "manifest_sha256": o.manifest_sha256}
            for o in outcomes]


def record_interim(protocol: Protocol, data_root: str | None, out: str | None = None, threads: int = 0,
                   device: str = "cpu", results_dir: Path = RESULTS_DIR) -> list[Outcome]:
    """Record rows for an unfinished training: the model of its latest in-progress checkpoint.

    The rows say "interim: S of N steps" in ``training`` and as a deviation (so they are never
    comparable); the model goes to ``results/checkpoints/<name>.pt`` with its per-episode
    accuracies (``--eval-only`` checks it as any other); the training folder stays, and the same
    ``reproduce NAME`` continues it and replaces these rows when it finishes.

    Raises:
        BenchmarkError: no in-progress checkpoint, a finished training (record it instead), or
            uncommitted changes now or in a training session.
    """
    from benchmark.checkpoint import check_state_dict, load_checkpoint, save_model
    from benchmark.reproduce_eval import evaluate_on_manifests
    from benchmark.runner import Benchmark, finished_methods
    from benchmark.savedmodel import describe

    if threads:
        torch.set_num_threads(threads)
    bench = Benchmark(_with_runtime(protocol, data_root, out or str(results_dir / "training"), threads, device))
    bench.prepare()
    if len(bench.methods) != 1:
        raise BenchmarkError(f"protocol {protocol.name} expands to {len(bench.methods)} methods; it must name one")
    method = bench.methods[0]
    rerun = rerun_command(protocol, data_root, torch.get_num_threads(), device)
    if method.slug in finished_methods(bench.run_dir / "rows.jsonl"):
        raise BenchmarkError(f"{protocol.name}: the training in {bench.run_dir} has finished; record its rows "
                             f"with {rerun}")
    path = bench.train_checkpoint(method)
    if not path.exists():
        raise BenchmarkError(f"{protocol.name}: no in-progress checkpoint {path} to record (with this --data-root "
                             f"the run folder is {bench.run_dir}); start or resume the training with {rerun}: it "
                             "saves one every train.checkpoint_every steps")
    state = load_checkpoint(path)
    step, train = int(state["step"]), train_config(protocol.config, method.learner)
    model = state["best_state"] if train.val_every else state["model"]
    learner = bench.build_learner(method)
    check_state_dict(learner, model, f"checkpoint {path}")
    learner.load_state_dict(model)
    interim = dataclasses.replace(protocol, deviations=protocol.deviations + (
        f"interim model: trained {step:,} of the protocol's {train.episodes:,} steps (training continues)",))
    outcomes = evaluate_on_manifests(bench, learner, interim)
    sessions = read_sessions(bench.run_dir / "reproduce.json")
    _refuse_if_dirty(protocol, bench.run_dir, sessions)
    model_file = path.with_name(f"{method.slug}.interim.pt")
    save_model(model_file, learner, describe(bench.cfg, method, bench.dataset, bench.setting))
    _commit_model(protocol, model_file, outcomes, results_dir)
    model_file.unlink()
    command = (f"{rerun} (stopped after step {step}), then "
               f"{rerun.replace(' --data-root', ' --interim --data-root', 1)}")
    reproduced.upsert(_rows(interim, outcomes, sessions, bench.dataset.fingerprint(), command, results_dir,
                            state["history"].get("train_wall_time_s"), trained_steps=step), results_dir)
    log.info("recorded %d interim row(s) at step %d of %d; the training continues from %s",
             len(outcomes), step, train.episodes, path)
    return outcomes
