"""``reproduce NAME --eval-only``: re-evaluate a committed checkpoint and write ``results/checks/NAME.json``.

The check records our number on each fixed test manifest (or a prefix of it), whether the
per-episode accuracies equal the committed ones exactly, the commit, date and hardware. It never
changes ``reproduced.csv``: a row describes the run that trained its model, not a later check.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from pathlib import Path

import numpy as np
import torch

from benchmark.checkpoint import read_model
from benchmark.provenance import dirty_paths, head_commit
from benchmark.reproduce import (Outcome, Protocol, _with_runtime, checkpoint_path, command_data_root,
                                 committed_episodes, hardware)
from benchmark.reproduce_upgrade import verify_checkpoint
from benchmark.reproduced import RESULTS_DIR
from benchmark.results import atomic_write_text
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)


def evaluate_checkpoint(protocol: Protocol, data_root: str | None, out: str, threads: int = 0,
                        device: str = "cpu", test_episodes: int | None = None,
                        results_dir: Path = RESULTS_DIR) -> list[Outcome]:
    """Re-evaluate ``results/checkpoints/<name>.pt`` on the protocol's fixed test manifests.

    Args:
        test_episodes: evaluate only the first ``test_episodes`` episodes of each manifest (a quick check;
            compared with the committed per-episode accuracies of those episodes).

    Raises:
        BenchmarkError: a missing checkpoint, one that is neither the file its rows were evaluated from
            nor their recorded upgrade (:func:`~benchmark.reproduce_upgrade.verify_checkpoint`), or a
            manifest that differs from the recorded one.
    """
    from benchmark.runner import Benchmark

    checkpoint = checkpoint_path(protocol, results_dir)
    if not checkpoint.exists():
        raise BenchmarkError(f"no committed checkpoint {checkpoint}; train it first with "
                             f"python run_benchmark.py reproduce {protocol.name} --data-root DIR")
    lineage = verify_checkpoint(protocol, results_dir)  # the file its rows were evaluated from, or their upgrade
    if lineage["upgraded_from"]:
        log.info("%s is the self-describing copy of the file the rows were evaluated from (sha256 %s; tensors "
                 "%s)", checkpoint, lineage["upgraded_from"]["sha256"][:12],
                 "checked equal" if lineage["weights_checked"] else "not checked: the original is not in git here")
    if threads:
        torch.set_num_threads(threads)
    bench = Benchmark(_with_runtime(protocol, data_root, out, threads, device))
    bench.prepare()
    if len(bench.methods) != 1:
        raise BenchmarkError(f"protocol {protocol.name} expands to {len(bench.methods)} methods; it must name one")
    learner = bench.build_learner(bench.methods[0])
    learner.load_state_dict(read_model(checkpoint)[0])  # a bare state dict or a self-describing model file
    return evaluate_on_manifests(bench, learner, protocol, test_episodes, committed_episodes(protocol, results_dir))


def evaluate_on_manifests(bench, learner, protocol: Protocol, test_episodes: int | None = None,
                          committed: dict[str, dict] | None = None) -> list[Outcome]:
    """Evaluate ``learner`` on each of the protocol's fixed test manifests (``bench`` prepared).

    Args:
        test_episodes: only the first ``test_episodes`` episodes of each manifest.
        committed: per-episode records by ``"<way>w<shot>s"``; a manifest that differs from the
            recorded one is refused (the dataset under --data-root or the protocol changed).
    """
    from benchmark.evaluate import evaluate

    outcomes = []
    for way, shot in protocol.evals:
        manifest = bench.test_manifests[(way, shot)][0]
        recorded = (committed or {}).get(f"{way}w{shot}s")
        if recorded and recorded["manifest_sha256"] != manifest.sha256:
            raise BenchmarkError(
                f"the {way}-way {shot}-shot test manifest of {protocol.name} ({manifest.sha256[:12]}) differs from "
                f"the one the committed number was measured on ({recorded['manifest_sha256'][:12]}): the dataset "
                "under --data-root or the protocol changed")
        full = test_episodes is None or test_episodes >= len(manifest.episodes)
        shown = manifest if full else dataclasses.replace(manifest, episodes=manifest.episodes[:test_episodes])
        metrics = evaluate(learner, bench.episode_loader(learner), shown, bench.device,
                           progress=f"eval {protocol.row_name(way, shot)}")
        outcomes.append(Outcome(protocol, way, shot, metrics["accuracy"], manifest.sha256, full))
    return outcomes


def tree_commit() -> str:
    """The checked-out commit, with ``-dirty`` when the tree has changes outside reproduce's outputs."""
    return head_commit() + ("-dirty" if dirty_paths() else "")


def write_check(protocol: Protocol, outcomes: list[Outcome], command: str, device: str = "cpu",
                results_dir: Path = RESULTS_DIR, commit: str | None = None) -> tuple[Path, bool]:
    """Write ``results/checks/<name>.json``: an eval-only re-evaluation and whether it equals the
    committed per-episode numbers exactly. Returns the path and that verdict (all rows).

    Args:
        commit: of the code that evaluated (:func:`tree_commit` taken before evaluating; default: now).
    """
    committed = committed_episodes(protocol, results_dir)
    rows, all_equal = {}, True
    for o in outcomes:
        ref = committed.get(f"{o.way}w{o.shot}s")
        equal = ref is not None and ref["manifest_sha256"] == o.manifest_sha256 and np.array_equal(
            np.asarray(ref["accuracy"][: len(o.accuracies)], dtype=np.float64), o.accuracies)
        all_equal &= equal
        c = o.comparison()
        rows[o.name] = {"mean": c["mean"], "ci95": c["ci95"], "episodes": len(o.accuracies),
                        "full_manifest": o.full_manifest, "manifest_sha256": o.manifest_sha256,
                        "equals_committed_episodes": equal}
    commit = commit or tree_commit()
    record = {"protocol": protocol.name, "rows": rows, "equals_committed_episodes": all_equal,
              "git_commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "hardware": hardware(device), "command": command}
    path = results_dir / "checks" / f"{protocol.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path, all_equal


def eval_command(protocol: Protocol, data_root: str | None, test_episodes: int | None, threads: int) -> str:
    """The ``--eval-only`` command line recorded in a check (the data root as
    :func:`~benchmark.reproduce.command_data_root` spells it)."""
    return (f"python run_benchmark.py reproduce {protocol.name} --data-root {command_data_root(data_root)} --eval-only"
            + (f" --test-episodes {test_episodes}" if test_episodes is not None else "")
            + (f" --threads {threads}" if threads else ""))
