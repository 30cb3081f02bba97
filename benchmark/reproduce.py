"""Reproduce published leaderboard numbers: one protocol config, one command, one committed row.

A *protocol* is a YAML file in ``benchmark/configs/`` with a ``protocol:`` section naming the
published row it reproduces (``reference``, an ``id`` of ``results/leaderboard.csv``)::

    python run_benchmark.py reproduce --list
    python run_benchmark.py reproduce omniglot_protonet_5w1s --data-root ../shared/data --threads 1
    python run_benchmark.py reproduce omniglot_protonet_5w1s_short --data-root ../shared/data --eval-only

Training runs the ordinary :class:`~benchmark.runner.Benchmark`; the best model is committed as
``results/checkpoints/<name>.pt`` (a model file read with ``weights_only=True``; older ones are bare
state dicts) with its per-episode test accuracies (``<name>.episodes.json``), and the row is upserted into
``results/reproduced.csv``, from which ``results/README.md`` is regenerated (never edit either by
hand). ``--eval-only`` rebuilds the same fixed test manifest (checked against the recorded sha256)
and re-evaluates the committed checkpoint; on the full manifest it must give the committed number.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.checkpoint import read_model
from benchmark.config import ExperimentConfig, load_yaml, merge
from benchmark.evaluate import evaluate
from benchmark.results import atomic_write_text, read_rows
from benchmark.tablewrite import to_markdown
from benchmark.stats import mean_ci95
from tasks.errors import BenchmarkError, suggest

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"

REPRODUCED_COLUMNS = [
    "name", "benchmark", "reference", "label", "comparable", "learner", "n_way", "n_shot", "n_query",
    "published_mean", "published_ci95", "mean", "ci95", "difference", "published_in_ci", "test_episodes",
    "training", "hardware", "train_wall_time_s", "eval_wall_time_s", "manifest_sha256", "dataset_fingerprint",
    "checkpoint_sha256", "git_commit", "date", "command",
]


@dataclass(frozen=True)
class Protocol:
    """One reproduction protocol: a resolved config and the published row it is compared with."""

    name: str
    path: Path
    config: ExperimentConfig
    reference: str
    label: str
    comparable: bool

    @property
    def way_shot(self) -> tuple[int, int]:
        return self.config.eval.ways[0], self.config.eval.shots[0]


def protocol_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names of the configs that declare a ``protocol:`` section (sorted)."""
    return sorted(p.stem for p in config_dir.glob("*.yaml") if "protocol" in load_yaml(p))


def load_protocol(name: str, config_dir: Path = CONFIG_DIR) -> Protocol:
    """Read ``<config_dir>/<name>.yaml``; a clear error for unknown names or incomplete protocols."""
    path = config_dir / f"{name}.yaml"
    names = protocol_names(config_dir)
    if not path.exists() or name not in names:
        raise BenchmarkError(f"no reproduction protocol {name!r} in {config_dir}.{suggest(name, names)} "
                             "List them with: python run_benchmark.py reproduce --list")
    cfg = merge(ExperimentConfig(), load_yaml(path), f"config file {path}")
    meta = cfg.protocol
    if not isinstance(meta.get("reference"), str):
        raise BenchmarkError(f"config file {path}: protocol.reference must name a row id of results/leaderboard.csv")
    if len(cfg.learners) != 1 or len(cfg.modalities) != 1 or len(cfg.eval.ways) != 1 or len(cfg.eval.shots) != 1:
        raise BenchmarkError(f"config file {path}: a protocol has one learner, one modality setting, "
                             "one eval way and one eval shot")
    if "+" in cfg.modalities[0] and len(cfg.fusions) != 1:
        raise BenchmarkError(f"config file {path}: a multimodal protocol names exactly one fusion")
    return Protocol(name, path, cfg, meta["reference"], str(meta.get("label", "")),
                    bool(meta.get("comparable", True)))


def read_leaderboard(results_dir: Path = RESULTS_DIR) -> pd.DataFrame:
    path = results_dir / "leaderboard.csv"
    try:
        return pd.read_csv(path, dtype={"id": str})
    except OSError as err:
        raise BenchmarkError(f"cannot read the published numbers {path}: {err.strerror or err}") from None


def published(protocol: Protocol, results_dir: Path = RESULTS_DIR) -> dict:
    """The leaderboard row the protocol reproduces."""
    board = read_leaderboard(results_dir)
    match = board[board["id"] == protocol.reference]
    if match.empty:
        raise BenchmarkError(f"{protocol.path}: protocol.reference {protocol.reference!r} is not an id of "
                             f"{results_dir / 'leaderboard.csv'}.{suggest(protocol.reference, board['id'].tolist())}")
    return match.iloc[0].to_dict()


@dataclass
class Outcome:
    """Our number on the protocol's test manifest, with its comparison to the published one."""

    protocol: Protocol
    accuracies: np.ndarray  # [n_episodes], fraction correct per episode
    manifest_sha256: str
    dataset_fingerprint: str
    published: dict
    full_manifest: bool
    eval_wall_time_s: float
    training: dict = dataclasses.field(default_factory=dict)

    @property
    def mean_ci(self) -> tuple[float, float]:
        mean, ci = mean_ci95(self.accuracies)
        return 100 * mean, 100 * ci

    def comparison(self) -> dict:
        mean, ci = self.mean_ci
        ref = float(self.published["mean"])
        ref_ci = self.published.get("ci95")
        return {"published_mean": ref, "published_ci95": None if pd.isna(ref_ci) else float(ref_ci),
                "mean": round(mean, 2), "ci95": round(ci, 2), "difference": round(mean - ref, 2),
                "published_in_ci": bool(abs(mean - ref) <= ci) if not math.isnan(ci) else False}

    def describe(self) -> str:
        c, p = self.comparison(), self.published
        way, shot = self.protocol.way_shot
        ref_ci = f" ± {c['published_ci95']:.2f}" if c["published_ci95"] is not None else ""
        lines = [
            f"protocol   {self.protocol.name}: {p['dataset']} {p['learner']} {way}-way {shot}-shot"
            + (f"  [{self.protocol.label}]" if self.protocol.label else ""),
            f"published  {c['published_mean']:.2f}{ref_ci}  ({p['source']}, {p['year']}"
            f"{', ' + str(p['table']) if isinstance(p['table'], str) and p['table'] else ''}; "
            f"confirmed: {p['confirmed']})",
            f"ours       {c['mean']:.2f} ± {c['ci95']:.2f}  (95% CI, {len(self.accuracies)} episodes"
            f"{'' if self.full_manifest else ', a prefix of the manifest'}, manifest {self.manifest_sha256[:12]})",
            f"difference {c['difference']:+.2f} points; published mean inside our 95% CI: "
            f"{'yes' if c['published_in_ci'] else 'no'}",
        ]
        if not self.protocol.comparable:
            lines.append("note       this protocol differs from the paper's (see its label): not a like-for-like comparison")
        return "\n".join(lines)


def _with_runtime(protocol: Protocol, data_root: str | None, out: str, threads: int, device: str) -> ExperimentConfig:
    overrides = {"out": out, "threads": threads, "device": device}
    if data_root is not None:
        overrides["data_root"] = data_root
    return merge(protocol.config, overrides, "reproduce")


def _method(bench):
    if len(bench.methods) != 1:
        raise BenchmarkError(f"protocol expands to {len(bench.methods)} methods; it must name exactly one")
    return bench.methods[0]


def hardware(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} thread(s)"


def train_protocol(protocol: Protocol, data_root: str | None, out: str = "runs/reproduce", threads: int = 0,
                   device: str = "cpu", results_dir: Path = RESULTS_DIR) -> Outcome:
    """Train and evaluate the protocol with :class:`Benchmark`, then commit checkpoint and row."""
    from benchmark.runner import Benchmark

    ref = published(protocol, results_dir)
    bench = Benchmark(_with_runtime(protocol, data_root, out, threads, device))
    start = time.perf_counter()
    bench.run()
    wall = time.perf_counter() - start
    method = _method(bench)
    record = bench.method_records[method.slug]
    way, shot = protocol.way_shot
    manifest, _ = bench.test_manifests[(way, shot)]
    rows = read_rows(bench.run_dir / "rows.jsonl")
    rows = rows[(rows["metric"] == "accuracy") & (rows["n_way"] == way) & (rows["n_shot"] == shot)
                & (rows["learner"] == method.learner)].sort_values("episode")
    outcome = Outcome(protocol, rows["value"].to_numpy(dtype=np.float64), manifest.sha256,
                      bench.dataset.fingerprint(), ref, True, float("nan"))
    cfg = protocol.config.train
    outcome.training = {
        "training": f"{cfg.episodes} steps x {cfg.meta_batch} {cfg.way}-way {cfg.shot}-shot {cfg.query}-query "
                    f"episode(s); best on validation at step {record.get('best_step')}",
        "train_wall_time_s": round(record.get("wall_time_s", wall), 1),
        "hardware": hardware(device),
    }
    checkpoint = Path(record["checkpoint"])
    target = results_dir / "checkpoints" / f"{protocol.name}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, target)
    atomic_write_text(target.with_suffix(".episodes.json"), json.dumps(
        {"manifest_sha256": manifest.sha256, "accuracy": outcome.accuracies.tolist()}))
    record_outcome(outcome, results_dir, data_root)
    return outcome


def evaluate_checkpoint(protocol: Protocol, data_root: str | None, out: str = "runs/reproduce",
                        threads: int = 0, device: str = "cpu", test_episodes: int | None = None,
                        results_dir: Path = RESULTS_DIR) -> Outcome:
    """Re-evaluate ``results/checkpoints/<name>.pt`` on the protocol's fixed test manifest.

    Args:
        test_episodes: evaluate only the first ``test_episodes`` episodes of the manifest (a quick check;
            compared with the committed per-episode accuracies of those episodes).

    Raises:
        BenchmarkError: a missing checkpoint, or a manifest that differs from the recorded one.
    """
    from benchmark.runner import Benchmark

    ref = published(protocol, results_dir)
    checkpoint = results_dir / "checkpoints" / f"{protocol.name}.pt"
    if not checkpoint.exists():
        raise BenchmarkError(f"no committed checkpoint {checkpoint}; train it first with "
                             f"python run_benchmark.py reproduce {protocol.name} --data-root DIR")
    if threads:
        torch.set_num_threads(threads)
    bench = Benchmark(_with_runtime(protocol, data_root, out, threads, device))
    bench.prepare()
    method = _method(bench)
    learner = bench.build_learner(method)
    learner.load_state_dict(read_model(checkpoint)[0])  # a bare state dict or a self-describing model file
    manifest, _ = bench.test_manifests[protocol.way_shot]
    committed = committed_episodes(protocol, results_dir)
    if committed and committed["manifest_sha256"] != manifest.sha256:
        raise BenchmarkError(
            f"the test manifest of {protocol.name} ({manifest.sha256[:12]}) differs from the one the committed "
            f"number was measured on ({committed['manifest_sha256'][:12]}): the dataset under --data-root or the "
            "protocol changed")
    full = test_episodes is None or test_episodes >= len(manifest.episodes)
    if not full:
        manifest = dataclasses.replace(manifest, episodes=manifest.episodes[:test_episodes])
    start = time.perf_counter()
    metrics = evaluate(learner, bench.episode_loader(learner), manifest, bench.device,
                       progress=f"eval {protocol.name}")
    return Outcome(protocol, metrics["accuracy"], bench.test_manifests[protocol.way_shot][0].sha256,
                   bench.dataset.fingerprint(), ref, full, time.perf_counter() - start)


def committed_episodes(protocol: Protocol, results_dir: Path = RESULTS_DIR) -> dict | None:
    """The committed per-episode accuracies of the protocol (``None`` if it was never trained)."""
    path = results_dir / "checkpoints" / f"{protocol.name}.episodes.json"
    return json.loads(path.read_text()) if path.exists() else None


def matches_committed(outcome: Outcome, results_dir: Path = RESULTS_DIR) -> bool | None:
    """Whether the re-evaluated episodes equal the committed ones exactly (``None``: nothing committed)."""
    committed = committed_episodes(outcome.protocol, results_dir)
    if committed is None:
        return None
    reference = np.asarray(committed["accuracy"][: len(outcome.accuracies)], dtype=np.float64)
    return bool(np.array_equal(reference, outcome.accuracies))


def read_reproduced(results_dir: Path = RESULTS_DIR) -> pd.DataFrame:
    path = results_dir / "reproduced.csv"
    if not path.exists():
        return pd.DataFrame(columns=REPRODUCED_COLUMNS)
    return pd.read_csv(path, dtype={"name": str})


def record_outcome(outcome: Outcome, results_dir: Path = RESULTS_DIR, data_root: str | None = None) -> None:
    """Upsert the protocol's row of ``reproduced.csv`` and regenerate ``README.md``."""
    from benchmark.provenance import git_commit

    p, cfg = outcome.protocol, outcome.protocol.config
    way, shot = p.way_shot
    checkpoint = results_dir / "checkpoints" / f"{p.name}.pt"
    table = read_reproduced(results_dir)
    previous = table[table["name"] == p.name]
    row = previous.iloc[0].to_dict() if not previous.empty else {}
    root = "DIR" if data_root is None else data_root
    row.update(
        name=p.name, benchmark=cfg.dataset, reference=p.reference, label=p.label, comparable=p.comparable,
        learner=cfg.learners[0], n_way=way, n_shot=shot, n_query=cfg.eval.query, **outcome.comparison(),
        test_episodes=len(outcome.accuracies), manifest_sha256=outcome.manifest_sha256,
        dataset_fingerprint=outcome.dataset_fingerprint,
        checkpoint_sha256=hashlib.sha256(checkpoint.read_bytes()).hexdigest() if checkpoint.exists() else "",
        git_commit=git_commit(), date=datetime.date.today().isoformat(),
        command=f"python run_benchmark.py reproduce {p.name} --data-root {root} --threads {torch.get_num_threads()}",
        **outcome.training,
    )
    if not math.isnan(outcome.eval_wall_time_s):
        row["eval_wall_time_s"] = round(outcome.eval_wall_time_s, 1)
    table = pd.concat([table[table["name"] != p.name], pd.DataFrame([row])], ignore_index=True)
    table = table.reindex(columns=REPRODUCED_COLUMNS).sort_values("name")
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_dir / "reproduced.csv", table.to_csv(index=False))
    write_readme(results_dir)


def write_readme(results_dir: Path = RESULTS_DIR) -> None:
    """Regenerate ``results/README.md`` from ``reproduced.csv`` and ``leaderboard.csv``."""
    table = read_reproduced(results_dir)
    shown = pd.DataFrame({
        "benchmark": table["benchmark"],
        "protocol": [f"{r.name}: {r.learner} {r.n_way}w{r.n_shot}s" + (f" ({r.label})" if isinstance(r.label, str)
                                                                       and r.label else "")
                     for r in table.itertuples()],
        "published": [f"{m:.2f}" + (f" ± {c:.2f}" if not pd.isna(c) else "")
                      for m, c in zip(table["published_mean"], table["published_ci95"])],
        "ours (95% CI)": [f"{m:.2f} ± {c:.2f}" for m, c in zip(table["mean"], table["ci95"])],
        "difference": [f"{d:+.2f}" + ("" if str(comp) == "True" else " (not comparable)")
                       for d, comp in zip(table["difference"], table["comparable"])],
        "published in CI": ["yes" if str(v) == "True" else "no" for v in table["published_in_ci"]],
        "hardware": table["hardware"], "training": table["training"],
        "wall time (s)": table["train_wall_time_s"], "rerun": [f"`{c}`" for c in table["command"]],
    })
    text = (
        "# Reproduced results\n\n"
        "Generated by `benchmark/reproduce.py` from `reproduced.csv` and `leaderboard.csv`: do not edit by hand.\n"
        "Each row was trained and evaluated with the command in its last column; the committed checkpoint\n"
        "`checkpoints/<protocol>.pt` is re-evaluated on the same fixed test manifest (sha256 in `reproduced.csv`)\n"
        "with `python run_benchmark.py reproduce <protocol> --data-root DIR --eval-only`.\n"
        "Accuracies are percentages over the manifest's test episodes; the interval is the 95% t-interval over\n"
        "episodes. `leaderboard.csv` holds the published numbers with their protocols and sources\n"
        "(`confirmed: no` marks numbers quoted from issue 7 that could not be checked against the paper text).\n\n"
        + (to_markdown(shown) if not shown.empty else "(nothing reproduced yet)\n")
    )
    atomic_write_text(results_dir / "README.md", text)


def list_protocols(config_dir: Path = CONFIG_DIR, results_dir: Path = RESULTS_DIR) -> str:
    """One line per protocol: name, published number, committed number if any."""
    board = read_leaderboard(results_dir).set_index("id")
    done = read_reproduced(results_dir).set_index("name")
    lines = []
    for name in protocol_names(config_dir):
        p = load_protocol(name, config_dir)
        ref = f"{board.loc[p.reference, 'mean']:.2f}" if p.reference in board.index else "?"
        ours = (f"{done.loc[name, 'mean']:.2f} ± {done.loc[name, 'ci95']:.2f}" if name in done.index else "-")
        lines.append(f"{name:36s} published {ref:>6s}  ours {ours:>14s}  {p.label}")
    return "\n".join(lines)
