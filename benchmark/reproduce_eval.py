"""``reproduce NAME --eval-only``: re-evaluate a committed checkpoint and write a check record.

The check records our per-episode accuracies on each fixed test manifest (or a prefix of it), whether
they equal the committed ones (``results/checkpoints/NAME.episodes.json``) exactly, and where they
differ, with the commit, date and hardware. It goes to ``<out>/checks/NAME.json`` (``runs/`` is
git-ignored), so that running a check leaves the tree clean; ``--update-check`` writes the committed
record ``results/checks/NAME.json`` instead. It never changes ``reproduced.csv``: a row describes the
run that trained its model, not a later check.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
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


def check_path(protocol: Protocol, out: str | Path, update: bool, results_dir: Path = RESULTS_DIR) -> Path:
    """Where a check goes: the committed ``results/checks/<name>.json`` with ``update``, else ``<out>/checks/``."""
    return (results_dir if update else Path(out)) / "checks" / f"{protocol.name}.json"


def run_check(protocol: Protocol, data_root: str | None, out: str, threads: int = 0, device: str = "cpu",
              test_episodes: int | None = None, results_dir: Path = RESULTS_DIR,
              update: bool = False) -> tuple[list[Outcome], Path, bool]:
    """Evaluate the committed checkpoint and write its check (:func:`check_path`): outcomes, path, verdict."""
    commit = tree_commit()  # the code that evaluates, not what the tree holds afterwards
    outcomes = evaluate_checkpoint(protocol, data_root, out, threads, device, test_episodes, results_dir)
    command = eval_command(protocol, data_root, test_episodes, threads, update)
    path, equal = write_check(protocol, outcomes, command, check_path(protocol, out, update, results_dir),
                              device, results_dir, commit)
    return outcomes, path, equal


def write_check(protocol: Protocol, outcomes: list[Outcome], command: str, path: Path, device: str = "cpu",
                results_dir: Path = RESULTS_DIR, commit: str | None = None) -> tuple[Path, bool]:
    """Write a check record to ``path``: per row our per-episode accuracies (``accuracy``), whether they
    equal the committed ones exactly and, where not, the committed values and the differing episodes.
    Returns the path and the verdict (all rows).

    Args:
        commit: of the code that evaluated (:func:`tree_commit` taken before evaluating; default: now).
    """
    committed = committed_episodes(protocol, results_dir)
    rows, all_equal = {}, True
    for o in outcomes:
        ref = committed.get(f"{o.way}w{o.shot}s")
        theirs = None if ref is None else np.asarray(ref["accuracy"][: len(o.accuracies)], dtype=np.float64)
        equal = ref is not None and ref["manifest_sha256"] == o.manifest_sha256 and np.array_equal(theirs, o.accuracies)
        all_equal &= equal
        c = o.comparison()
        rows[o.name] = {"mean": c["mean"], "ci95": c["ci95"], "episodes": len(o.accuracies),
                        "full_manifest": o.full_manifest, "manifest_sha256": o.manifest_sha256,
                        "equals_committed_episodes": equal, "accuracy": o.accuracies.tolist()}
        if not equal:
            rows[o.name].update(_differences(o.accuracies, theirs))
    source = checkpoint_path(protocol, results_dir).with_suffix(".episodes.json")
    record = {"format": 2, "protocol": protocol.name, "rows": rows, "equals_committed_episodes": all_equal,
              "compared_with": {"path": source.relative_to(results_dir).as_posix(),
                                "sha256": hashlib.sha256(source.read_bytes()).hexdigest() if source.exists() else None},
              "git_commit": commit or tree_commit(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "hardware": hardware(device), "command": command}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dump_check(record))
    return path, all_equal


def _differences(ours: np.ndarray, theirs: np.ndarray | None) -> dict:
    """The committed values beside ours, and the episodes where they differ (all, without a record)."""
    if theirs is None:
        return {"committed_accuracy": None, "differing_episodes": list(range(len(ours)))}
    n = min(len(ours), len(theirs))
    differ = [i for i in range(len(ours)) if i >= n or ours[i] != theirs[i]]
    return {"committed_accuracy": theirs.tolist(), "differing_episodes": differ}


def dump_check(record: dict) -> str:
    """A check record as indented JSON with each per-episode list on one line."""
    lists = {}

    def mark(value):
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            key = f"@list{len(lists)}@"
            lists[key] = json.dumps(value)
            return key
        return value

    text = json.dumps(mark(record), indent=2)
    for key, dumped in lists.items():
        text = text.replace(f'"{key}"', dumped)
    return text + "\n"


def eval_command(protocol: Protocol, data_root: str | None, test_episodes: int | None, threads: int,
                 update: bool = False) -> str:
    """The ``--eval-only`` command line recorded in a check (the data root as
    :func:`~benchmark.reproduce.command_data_root` spells it)."""
    return (f"python run_benchmark.py reproduce {protocol.name} --data-root {command_data_root(data_root)} --eval-only"
            + (f" --test-episodes {test_episodes}" if test_episodes is not None else "")
            + (" --update-check" if update else "") + (f" --threads {threads}" if threads else ""))
