"""The Python API: ``from benchmark import run, evaluate, load_learner`` (see ``docs/python-api.md``).

``run`` trains and evaluates like ``python run_benchmark.py run``; ``load_learner`` rebuilds a trained
learner from a checkpoint; ``evaluate`` runs it on the episodes of a file or on test episodes sampled
from a dataset (the same episodes ``run`` uses for the same seed) and returns per-query predictions.
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmark.config import ExperimentConfig, apply_overrides, default_experiment
from benchmark.episodefile import EpisodeFile, read_episodes
from benchmark.predict import Episodes, episodes_from_file, predict, training_flags
from benchmark.savedmodel import config_of, load_learner
from learners import Learner
from tasks.datasets import FewShotDataset, load_dataset
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)

__all__ = ["run", "evaluate", "load_learner"]


def run(config: str | Path | dict | ExperimentConfig | None = None, resume: bool = True, **overrides: Any) -> pd.DataFrame:
    """Train and evaluate an experiment; returns the summary table (one row per method and way/shot).

    Args:
        config: a YAML file, a mapping or an :class:`ExperimentConfig`; ``None`` is the default suite.
        resume: continue an unfinished run of the same config in its ``out`` folder.
        **overrides: config keys, e.g. ``learners=["protonet"], out="runs/nb", train={"episodes": 50}``.
    """
    from benchmark.runner import Benchmark

    cfg = default_experiment() if config is None else config_of(config)
    if overrides:
        cfg = apply_overrides(cfg, overrides, "run() arguments")
    return Benchmark(cfg, resume=resume).run()


def _dataset(meta: dict, dataset: str | FewShotDataset | None, data_root: str | None,
             options: dict | None) -> FewShotDataset:
    if isinstance(dataset, FewShotDataset):
        return dataset
    name = dataset or meta["dataset"]["name"]
    options = dict(meta["dataset"]["options"] if options is None and name == meta["dataset"]["name"] else options or {})
    options.pop("download", None)
    root = data_root if data_root is not None else meta.get("config", {}).get("data_root")
    loaded = load_dataset(name, root, **options)
    if loaded.name == meta["dataset"]["name"] and loaded.fingerprint() != meta["dataset"]["fingerprint"]:
        log.warning("dataset %r under %s differs from the one the checkpoint was trained on (fingerprint %s, "
                    "checkpoint %s): class names and indices may not match", name, root,
                    loaded.fingerprint()[:12], meta["dataset"]["fingerprint"][:12])
    return loaded


def sample_episodes(meta: dict, dataset: FewShotDataset, way: int, shot: int, query: int, n_episodes: int,
                    seed: int, split: str = "test") -> Episodes:
    """The test manifest ``run`` uses for this seed and setting, as :class:`Episodes`."""
    from benchmark.rundir import seeds
    from tasks.sampler import EpisodeManifest

    manifest = EpisodeManifest.generate(dataset, split, way, shot, query, n_episodes, seeds(seed)["manifest"])
    specs = list(manifest.episodes)
    return Episodes(dataset, specs, [str(i) for i in range(len(dataset.labels))], [str(s.episode_id) for s in specs],
                    training_flags(specs, dataset.class_names, meta), manifest.sha256, dataset.name, seed)


def evaluate(learner: Learner | str | Path, episodes: str | Path | EpisodeFile | None = None,
             dataset: str | FewShotDataset | None = None, data_root: str | None = None,
             dataset_options: dict | None = None, ways: list[int] | None = None, shots: list[int] | None = None,
             query: int | None = None, n_episodes: int | None = None, seed: int | None = None,
             out: str | Path | None = None, device: str = "cpu") -> pd.DataFrame:
    """Evaluate a trained learner; returns one row per query item (see :func:`benchmark.predict.predict`).

    Args:
        learner: from :func:`load_learner`, or a checkpoint path.
        episodes: an episode file (JSON/CSV): exactly these episodes are run. Without it, test episodes
            are sampled from ``dataset`` (default: the checkpoint's) as ``run`` does, for every way and
            shot (defaults: the checkpoint's config), ``n_episodes`` each, with the run's ``seed``.
        out: a folder; when given, ``rows.jsonl``, ``summary.csv``/``.md``, ``predictions.csv`` and
            ``run.json`` are written to ``out/<evaluation id>/`` (returned in ``df.attrs["run_dir"]``).
    """
    if not isinstance(learner, Learner):
        learner = load_learner(learner, device=device)
    if not hasattr(learner, "benchmark_info"):
        raise BenchmarkError("evaluate() takes a learner from load_learner() (it carries the preprocessing)")
    meta = learner.benchmark_info.meta
    cfg_eval = meta.get("config", {}).get("eval", {})
    batches: list[Episodes] = []
    if episodes is not None:
        given = [f"{name} (--{flag})" for name, flag, value in (
            ("ways", "ways", ways), ("shots", "shots", shots), ("query", "queries", query),
            ("n_episodes", "test-episodes", n_episodes), ("seed", "seed", seed)) if value is not None]
        if given:
            raise BenchmarkError(f"{', '.join(given)} only apply to sampled episodes, and the episode file {episodes} "
                                 "fixes its episodes: leave them out, or leave out the file to sample episodes")
        source = episodes if isinstance(episodes, EpisodeFile) else read_episodes(episodes)

        data = _dataset(meta, dataset, data_root, dataset_options) if source.by_index else None
        batches.append(episodes_from_file(source, meta, data))
    else:
        data = _dataset(meta, dataset, data_root, dataset_options)
        for way in ways or cfg_eval.get("ways", [5]):
            for shot in shots or cfg_eval.get("shots", [1]):
                batches.append(sample_episodes(meta, data, way, shot, query or cfg_eval.get("query", 15),
                                               n_episodes or cfg_eval.get("episodes", 600),
                                               meta.get("seed", 0) if seed is None else seed))
    frames, rows = [], []
    for eps in batches:
        preds, metrics = predict(learner, eps, device)
        frames.append(preds)
        rows += _rows(meta, eps, metrics)
    predictions = pd.concat(frames, ignore_index=True)
    if out is not None:
        predictions.attrs["run_dir"] = str(write_evaluation(Path(out), learner, predictions, rows, batches))
    return predictions


def _rows(meta: dict, eps: Episodes, metrics: dict) -> list[dict]:
    """Per-episode rows in the format of ``rows.jsonl`` (plus the training-class flag and the episode id).

    ``n_query`` is the number of queries per class when every class of every episode holds the same
    number, else ``None`` for all episodes of the source (one summary row per way and shot);
    ``n_queries`` is each episode's total. ``seed`` is the seed that drew the episodes; episodes of a file were not drawn, and their rows
    carry the checkpoint's run seed (run.json says ``"seed": null`` for such a source).
    """
    from benchmark.metrics import SCHEMA_VERSION
    from benchmark.tables import method_setting

    setting = meta["setting"]
    common = {"learner": meta["learner"], "fusion": meta["fusion"] or "none", "modalities": "+".join(meta["modalities"]),
              "setting": method_setting(tuple(setting["support"]), tuple(setting["query"]), tuple(meta["modalities"])),
              "schema_version": SCHEMA_VERSION,
              "dataset": eps.name, "seed": meta.get("seed", 0) if eps.seed is None else eps.seed,
              "manifest_sha256": eps.source_sha256}
    rows = []
    regular = all(spec.n_query is not None for spec in eps.specs)
    for k, spec in enumerate(eps.specs):
        for name, values in metrics.items():
            rows.append({**common, "n_way": spec.n_way, "n_shot": spec.n_shot,
                         "n_query": spec.n_query if regular else None, "n_queries": spec.n_queries,
                         "episode": k, "episode_id": eps.ids[k], "in_training_classes": eps.in_training[k],
                         "metric": name, "value": float(values[k])})
    return rows


def write_evaluation(out: Path, learner: Learner, predictions: pd.DataFrame, rows: list[dict],
                     sources: list[Episodes]) -> Path:
    """Write the files of one evaluation into ``out/<id>/`` (id: checkpoint and episodes hashes)."""
    from benchmark.provenance import cpu_model, git_commit, package_versions
    from benchmark.results import atomic_write_text
    from benchmark.tablewrite import write_summary
    from benchmark.rundir import prepare_output

    info = learner.benchmark_info
    weights = hashlib.sha256(Path(info.path).read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps([weights, [s.source_sha256 for s in sources]]).encode()).hexdigest()[:10]
    run_id = f"eval-{Path(info.path).stem}-{key}"
    run_dir = prepare_output(str(out), run_id)
    rows = [{"run_id": run_id, **r} for r in rows]
    atomic_write_text(run_dir / "rows.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    atomic_write_text(run_dir / "predictions.csv", predictions.to_csv(index=False))
    write_summary(run_dir)
    meta = {k: v for k, v in info.meta.items() if k not in ("text_corpus", "config")}
    meta["dataset"] = {k: v for k, v in meta["dataset"].items() if not k.endswith("classes") and k != "train_class_ids"}
    record = {"run_id": run_id, "status": "finished", "kind": "evaluate", "checkpoint": str(info.path),
              "checkpoint_sha256": weights, "bare_checkpoint": info.bare, "model": meta,
              "episodes": [{"source": s.name, "sha256": s.source_sha256, "seed": s.seed, "n_episodes": len(s.specs),
                            "in_training_classes": int(sum(s.in_training))} for s in sources],
              "git_commit": git_commit(), "packages": package_versions(), "host": platform.node(), "cpu": cpu_model(),
              "torch_threads": torch.get_num_threads()}
    atomic_write_text(run_dir / "run.json", json.dumps(record, indent=2))
    log.info("evaluation written to %s (predictions.csv, rows.jsonl, summary.md, run.json)", run_dir)
    return run_dir
