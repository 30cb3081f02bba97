"""Reproduce published leaderboard numbers: one protocol config, one command, committed rows.

A *protocol* is a YAML file in ``benchmark/configs/`` with a ``protocol:`` section naming the
published row(s) it reproduces: ``reference`` is one id of ``results/leaderboard.csv`` or a list
with one id per evaluated (way, shot), so one training gives several rows (Snell et al.'s 1-shot
model is tested at 5-way and 20-way: rows ``omniglot_protonet_1shot/5w1s`` and ``.../20w1s``; a
protocol with one evaluation has one row named after it). ``deviations`` lists every way the protocol
differs from the paper's; a row is ``comparable`` only without any::

    python run_benchmark.py reproduce --list
    python run_benchmark.py reproduce omniglot_protonet_1shot --data-root ../shared/data --threads 2
    python run_benchmark.py reproduce omniglot_protonet_1shot --data-root ../shared/data --eval-only

Training runs the ordinary :class:`~benchmark.runner.Benchmark` into ``results/training/<run_id>/``
(its ``checkpoints/*.train.pt`` may be committed while it runs: ``reproduce NAME`` resumes from
them). When it is done, the model file (read with ``weights_only=True``; the older bare state dicts
were upgraded in place, see :mod:`benchmark.reproduce_upgrade`) goes to ``results/checkpoints/<name>.pt``
with the per-episode test accuracies (``<name>.episodes.json``), the rows go to ``results/reproduced.csv`` (see
:mod:`benchmark.reproduced`; only from a clean tree) and the training folder is removed.
``--eval-only`` re-evaluates the committed checkpoint on the same fixed manifests and writes a check
with the per-episode values it compared (:mod:`benchmark.reproduce_eval`; the committed
``results/checks/<name>.json`` only with ``--update-check``); it never changes a row.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.config import ExperimentConfig, load_yaml, merge
from benchmark.reproduced import GOAL_POINTS, REPO, RESULTS_DIR, read_reproduced
from benchmark.stats import mean_ci95
from tasks.errors import BenchmarkError, suggest

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROTOCOL_KEYS = ("reference", "label", "deviations", "comparable")  # comparable: legacy, only ``false``


@dataclass(frozen=True)
class Protocol:
    """One reproduction protocol: a resolved config and the published rows it is compared with.

    ``published`` maps each evaluated (way, shot) to its ``leaderboard.csv`` row.
    """

    name: str
    path: Path
    config: ExperimentConfig
    published: dict[tuple[int, int], dict]
    label: str
    deviations: tuple[str, ...]

    @property
    def comparable(self) -> bool:
        return not self.deviations

    @property
    def evals(self) -> list[tuple[int, int]]:
        return list(self.published)

    def row_name(self, way: int, shot: int) -> str:
        return self.name if len(self.published) == 1 else f"{self.name}/{way}w{shot}s"


def protocol_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names of the configs that declare a ``protocol:`` section (sorted)."""
    return sorted(p.stem for p in config_dir.glob("*.yaml") if "protocol" in load_yaml(p))


def read_leaderboard(results_dir: Path = RESULTS_DIR) -> pd.DataFrame:
    path = results_dir / "leaderboard.csv"
    try:
        return pd.read_csv(path, dtype={"id": str})
    except OSError as err:
        raise BenchmarkError(f"cannot read the published numbers {path}: {err.strerror or err}") from None


def load_protocol(name: str, config_dir: Path = CONFIG_DIR, results_dir: Path = RESULTS_DIR) -> Protocol:
    """Read ``<config_dir>/<name>.yaml``; a clear error for unknown names or incomplete protocols."""
    path = config_dir / f"{name}.yaml"
    names = protocol_names(config_dir)
    if not path.exists() or name not in names:
        raise BenchmarkError(f"no reproduction protocol {name!r} in {config_dir}.{suggest(name, names)} "
                             "List them with: python run_benchmark.py reproduce --list")
    cfg = merge(ExperimentConfig(), load_yaml(path), f"config file {path}")
    meta = cfg.protocol
    unknown = sorted(set(meta) - set(PROTOCOL_KEYS))
    if unknown:
        raise BenchmarkError(f"config file {path}: unknown protocol key(s) {unknown}; allowed: {list(PROTOCOL_KEYS)}")
    deviations = meta.get("deviations", [])
    if not isinstance(deviations, list) or not all(isinstance(d, str) and d.strip() for d in deviations):
        raise BenchmarkError(f"config file {path}: protocol.deviations must be a list of sentences")
    if meta.get("comparable", False) is not False:
        raise BenchmarkError(f"config file {path}: protocol.comparable can only be false (a protocol is comparable "
                             "exactly when protocol.deviations is empty); list the deviations instead")
    if "comparable" in meta and not deviations:  # the older form: the label says how it deviates
        deviations = [str(meta.get("label") or "deviates from the paper's protocol (protocol.comparable: false)")]
    if len(cfg.learners) != 1 or len(cfg.modalities) != 1:
        raise BenchmarkError(f"config file {path}: a protocol has one learner and one modality setting")
    if "+" in cfg.modalities[0] and len(cfg.fusions) != 1:
        raise BenchmarkError(f"config file {path}: a multimodal protocol names exactly one fusion")
    published = _published_rows(path, cfg, meta.get("reference"), results_dir)
    auto = [d for row in published.values() for d in _test_deviations(cfg, row)]
    return Protocol(name, path, cfg, published, str(meta.get("label", "")),
                    tuple(deviations) + tuple(dict.fromkeys(auto)))


def _published_rows(path: Path, cfg: ExperimentConfig, reference, results_dir: Path) -> dict:
    """Match each ``protocol.reference`` id to the evaluated (way, shot) its leaderboard row names."""
    refs = [reference] if isinstance(reference, str) else reference
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise BenchmarkError(f"config file {path}: protocol.reference must be an id of results/leaderboard.csv "
                             "or a list of them, one per evaluated (way, shot)")
    board = read_leaderboard(results_dir).set_index("id", drop=False)
    evals = [(w, s) for w in cfg.eval.ways for s in cfg.eval.shots]
    published = {}
    for ref in refs:
        if ref not in board.index:
            raise BenchmarkError(f"config file {path}: protocol.reference {ref!r} is not an id of "
                                 f"{results_dir / 'leaderboard.csv'}.{suggest(ref, board.index.tolist())}")
        row = board.loc[ref].to_dict()
        key = (int(row["n_way"]), int(row["n_shot"]))
        if key not in evals or key in published or row["dataset"] != cfg.dataset:
            raise BenchmarkError(f"config file {path}: protocol.reference {ref!r} is {row['dataset']} "
                                 f"{key[0]}-way {key[1]}-shot, which is not one of the protocol's evaluations "
                                 f"({cfg.dataset}, eval.ways x eval.shots = {evals}) or is named twice")
        published[key] = row
    missing = [e for e in evals if e not in published]
    if missing:
        raise BenchmarkError(f"config file {path}: no protocol.reference for the evaluation(s) {missing}; "
                             "name one published row per evaluated (way, shot)")
    return {e: published[e] for e in evals}


def _test_deviations(cfg: ExperimentConfig, row: dict) -> list[str]:
    """Test-protocol differences from the published row that the config shows by itself."""
    out = []
    for key, ours, what in (("test_episodes", cfg.eval.episodes, "test episodes"),
                            ("test_queries", cfg.eval.query, "test queries per class")):
        if not pd.isna(row.get(key)) and int(row[key]) != ours:
            out.append(f"{ours} {what} instead of the paper's {int(row[key])}")
    return out


@dataclass
class Outcome:
    """Our number for one evaluated (way, shot) of a protocol, with its comparison to the published one."""

    protocol: Protocol
    way: int
    shot: int
    accuracies: np.ndarray  # [n_episodes], fraction correct per episode
    manifest_sha256: str
    full_manifest: bool = True

    @property
    def name(self) -> str:
        return self.protocol.row_name(self.way, self.shot)

    @property
    def published(self) -> dict:
        return self.protocol.published[(self.way, self.shot)]

    def comparison(self) -> dict:
        mean, ci = (100 * v for v in mean_ci95(self.accuracies))
        ref, ref_ci = float(self.published["mean"]), self.published.get("ci95")
        difference = round(round(mean, 2) - ref, 2)
        return {"published_mean": ref, "published_ci95": None if pd.isna(ref_ci) else float(ref_ci),
                "mean": round(mean, 2), "ci95": round(ci, 2), "difference": difference,
                "published_in_ci": bool(abs(mean - ref) <= ci) if not math.isnan(ci) else False,
                "within_half_point": bool(abs(difference) <= GOAL_POINTS)}

    def describe(self) -> str:
        c, p = self.comparison(), self.published
        ref_ci = f" ± {c['published_ci95']:.2f}" if c["published_ci95"] is not None else ""
        where = p.get("where") if isinstance(p.get("where"), str) else p.get("table")
        lines = [
            f"row        {self.name}: {p['dataset']} {p['learner']} {self.way}-way {self.shot}-shot"
            + (f"  [{self.protocol.label}]" if self.protocol.label else ""),
            f"published  {c['published_mean']:.2f}{ref_ci}  ({p['source']}, {p['year']}"
            f"{', ' + where if isinstance(where, str) and where else ''}; confirmed: {p['confirmed']})",
            f"ours       {c['mean']:.2f} ± {c['ci95']:.2f}  (95% CI, {len(self.accuracies)} episodes"
            f"{'' if self.full_manifest else ', a prefix of the manifest'}, manifest {self.manifest_sha256[:12]})",
            f"difference {c['difference']:+.2f} points; within {GOAL_POINTS}: "
            f"{'yes' if c['within_half_point'] else 'no'}; published mean inside our 95% CI: "
            f"{'yes' if c['published_in_ci'] else 'no'}",
        ]
        if not self.protocol.comparable:
            lines.append("not comparable: " + "; ".join(self.protocol.deviations))
        return "\n".join(lines)


def hardware(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}"
    from benchmark.provenance import cpu_model

    return f"CPU {cpu_model()}, {torch.get_num_threads()} thread(s)"


def checkpoint_path(protocol: Protocol, results_dir: Path = RESULTS_DIR) -> Path:
    return results_dir / "checkpoints" / f"{protocol.name}.pt"


def committed_episodes(protocol: Protocol, results_dir: Path = RESULTS_DIR) -> dict[str, dict]:
    """The committed per-episode accuracies by ``"<way>w<shot>s"`` (empty if never trained).

    Reads both formats: ``{"evals": {"5w1s": {"manifest_sha256", "accuracy"}}}`` and the first
    one-evaluation file ``{"manifest_sha256", "accuracy"}``.
    """
    path = checkpoint_path(protocol, results_dir).with_suffix(".episodes.json")
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if "evals" in data:
        return data["evals"]
    (way, shot), = protocol.evals
    return {f"{way}w{shot}s": data}


def list_protocols(config_dir: Path = CONFIG_DIR, results_dir: Path = RESULTS_DIR) -> str:
    """One line per row of every protocol: name, published number, committed number if any."""
    done = read_reproduced(results_dir).set_index("name")
    lines = []
    for name in protocol_names(config_dir):
        p = load_protocol(name, config_dir, results_dir)
        for (way, shot), row in p.published.items():
            rname = p.row_name(way, shot)
            ours = f"{done.loc[rname, 'mean']:.2f} ± {done.loc[rname, 'ci95']:.2f}" if rname in done.index else "-"
            tag = "" if p.comparable else "  (not comparable: deviates)"
            lines.append(f"{rname:40s} published {row['mean']:6.2f}  ours {ours:>14s}  {p.label}{tag}")
    return "\n".join(lines)


def command_data_root(data_root: str | None) -> str:
    """``--data-root`` as a recorded command spells it: never one machine's absolute path.

    A relative path stays as given (commands run from the checkout); an absolute one inside the
    checkout or beside it (``/work/shared/data`` for a checkout ``/work/repo``) becomes relative to the
    checkout (``../shared/data``); any other path, or none, is the placeholder ``DIR``.
    """
    if data_root is None:
        return "DIR"
    path = Path(data_root).expanduser()
    if not path.is_absolute():
        return os.path.normpath(data_root)
    try:
        relative = os.path.relpath(path, REPO)
    except ValueError:  # another drive
        return "DIR"
    return relative if Path(relative).parts.count("..") <= 1 else "DIR"


def _with_runtime(protocol: Protocol, data_root: str | None, out: str, threads: int, device: str) -> ExperimentConfig:
    overrides = {"out": out, "threads": threads, "device": device}
    if data_root is not None:  # absolute in run.json (the run id names the data by its contents, not its path)
        overrides["data_root"] = str(Path(data_root).expanduser().resolve())
    return merge(protocol.config, overrides, "reproduce")
