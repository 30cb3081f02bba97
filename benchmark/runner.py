"""The harness: meta-train each method with validation-based model selection,
evaluate it on fixed test manifests and write rows, summaries and ``run.json``."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.checkpoint import RunLock
from benchmark.config import ExperimentConfig, component_config, to_dict, train_config
from benchmark.evaluate import evaluate
from benchmark.methods import Method, check_names, expand_methods
from benchmark.provenance import git_commit, package_versions, peak_memory_mb, resolve_device
from benchmark.metrics import SCHEMA_VERSION
from benchmark.results import append_rows, atomic_write_bytes, atomic_write_text, jsonable, read_rows
from benchmark.tables import method_setting
from benchmark.tablewrite import write_summary, write_tables
from benchmark.runtime import keep_freed_memory
from benchmark.trainlog import TrainLog
from benchmark.training import meta_train
from learners import LEARNERS, TEXT_ENCODERS, Learner, ModelSpec
from tasks.datasets import FewShotDataset, load_dataset
from tasks.episode import EpisodeLoader, TaskSetting, parse_modalities
from tasks.errors import BenchmarkError, UnsupportedSetting
from tasks.sampler import EpisodeManifest, EpisodeSampler

log = logging.getLogger(__name__)


def config_hash(cfg: ExperimentConfig) -> str:
    """Hash of what determines the numbers (not where they are written)."""
    data = to_dict(cfg)
    for key in ("out", "device", "threads", "protocol", "note"):
        data.pop(key)
    data["train"].pop("checkpoint_every")  # where training may resume from, not what it computes
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def seeds(seed: int) -> dict[str, int]:
    """Independent seeds for episode sampling (manifests), model init and training episodes."""
    children = np.random.SeedSequence(seed).spawn(3)
    return {name: int(c.generate_state(1)[0]) for name, c in zip(("manifest", "init", "train_episodes"), children)}


def prepare_output(out: str, run_id: str) -> Path:
    """Create ``out/run_id`` and check that it is writable."""
    run_dir = Path(out) / run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test.{os.getpid()}"  # per process: concurrent runs may probe at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise BenchmarkError(
            f"cannot write to the output directory {run_dir}: {err.strerror or err}; choose another --out"
        ) from None
    return run_dir


class Benchmark:
    """Runs an :class:`ExperimentConfig` end to end. ``run()`` returns the summary table."""

    def __init__(self, cfg: ExperimentConfig, resume: bool = True) -> None:
        self.cfg = cfg.validate()
        self.resume = resume  # continue from training checkpoints of an unfinished run (else start over)
        check_names(cfg)
        self.methods = expand_methods(cfg)
        if not self.methods:
            raise BenchmarkError("no method to run: check --learners, --modalities and --fusions")
        self.setting = TaskSetting(parse_modalities(cfg.eval.support_modalities, "eval.support_modalities"),
                                   parse_modalities(cfg.eval.query_modalities, "eval.query_modalities"))
        self.device = resolve_device(cfg.device)
        self.seeds = seeds(cfg.seed)
        self.run_id = f"{cfg.dataset}-seed{cfg.seed}-{config_hash(cfg)}"
        self.run_dir = prepare_output(cfg.out, self.run_id)
        self.manifest_dir = Path(cfg.out) / "manifests"

    # -- data ---------------------------------------------------------------------------------
    def _load_data(self) -> None:
        cfg = self.cfg
        self.dataset: FewShotDataset = load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options)
        self._fit_to_dataset_modalities()
        self.samplers = {}  # training samplers per learner, built now so impossible episodes fail early
        for learner in dict.fromkeys(m.learner for m in self.methods):
            train = train_config(cfg, learner)
            self.samplers[learner] = EpisodeSampler(self.dataset, "train", train.way, train.shot, train.query)
        validates = any(train_config(cfg, m.learner).val_every for m in self.methods)
        self.val_manifest = EpisodeManifest.get(
            self.manifest_dir, self.dataset, "val", cfg.train.val_way, cfg.train.val_shot, cfg.train.val_query,
            cfg.train.val_episodes, self.seeds["manifest"])[0] if validates else None
        self.test_manifests = {}
        for way in cfg.eval.ways:
            for shot in cfg.eval.shots:
                self.test_manifests[(way, shot)] = EpisodeManifest.get(
                    self.manifest_dir, self.dataset, "test", way, shot, cfg.eval.query, cfg.eval.episodes,
                    self.seeds["manifest"])
        self._text: dict[str, tuple] = {}

    def _fit_to_dataset_modalities(self) -> None:
        """Without captions, items show images only: drop item text from the task and skip text methods."""
        if self.dataset.captions is not None:
            return
        if "text" in self.setting.support or "text" in self.setting.query:
            log.info("dataset %r has no instance-level text: episodes show images only (class text stays "
                     "available to learners such as am3)", self.cfg.dataset)
            self.setting = TaskSetting(("image",), ("image",))
        kept = [m for m in self.methods if "text" not in m.modalities]
        for method in self.methods:
            if method not in kept:
                log.warning("skipping %s: dataset %r has no captions for the item text it needs",
                            method.label, self.cfg.dataset)
        if not kept:
            raise UnsupportedSetting(
                f"dataset {self.cfg.dataset!r} has no instance-level text, and every requested method needs it; "
                "use --modalities image (with a class-text learner such as am3 for image+class text)"
            )
        self.methods = kept

    def _preflight(self) -> None:
        """Build every method once before any training, so impossible settings fail (or are skipped) early.

        With several methods, one that cannot run in this task setting is skipped with a warning and
        recorded in ``run.json``; if none can run, or only one was asked for, it is an error.
        """
        runnable, reasons = [], {}
        for method in self.methods:
            try:
                self.build_learner(method)
                runnable.append(method)
            except UnsupportedSetting as err:
                reasons[method.label] = str(err)
        if reasons and (len(self.methods) == 1 or not runnable):
            raise UnsupportedSetting("; ".join(f"{k}: {v}" for k, v in reasons.items()))
        for label, reason in reasons.items():
            log.warning("skipping %s: %s", label, reason)
        self.skipped.update(reasons)
        self.methods = runnable

    def _text_inputs(self) -> tuple:
        """(encoder factory, prepared item text, prepared class text), computed once per run."""
        if not self._text:
            cfg, data = self.cfg, self.dataset
            train = set(data.split_classes("train").tolist())
            corpus = [t for t, y in zip(data.captions or [], data.labels) if y in train]
            corpus += [t for c, t in enumerate(data.class_texts or []) if c in train]
            cls = TEXT_ENCODERS.get(cfg.text_encoder)
            options = dict(cfg.text_encoder_options)
            try:
                encoder = cls(corpus, **options)
            except TypeError as err:
                raise BenchmarkError(f"text_encoder_options for {cfg.text_encoder!r}: {err}") from None
            item = encoder.prepare(data.captions) if data.captions is not None else None
            klass = encoder.prepare(data.class_texts) if data.class_texts is not None else None
            self._text = {"factory": lambda: cls(corpus, **options), "item": item, "class": klass}
        return self._text["factory"], self._text["item"], self._text["class"]

    def _loader(self, setting: TaskSetting, learner: Learner | None = None) -> EpisodeLoader:
        """Episodes for ``learner``: pixels, or cached features when its image backbone is frozen."""
        _, item_text, class_text = self._text_inputs()
        return EpisodeLoader(self.dataset.images, self.dataset.mean, self.dataset.std, item_text, class_text, setting,
                             image_features=self._image_features(learner))

    def _image_features(self, learner: Learner | None) -> torch.Tensor | None:
        """Per-item features ``[n_items, D]`` of the learner's frozen image backbone, from the on-disk
        feature cache (:mod:`tasks.features`); ``None`` when it has none (e.g. a trainable Conv-4)."""
        if learner is None:
            return None
        frozen = [m for m in learner.modules() if getattr(m, "frozen", False) and hasattr(m, "precompute")]
        if not frozen:
            return None
        start = time.perf_counter()
        features = frozen[0].precompute(self.dataset, self.device)
        log.info("image features %s ready in %.1f s", tuple(features.shape), time.perf_counter() - start)
        return features

    # -- one method ---------------------------------------------------------------------------
    def build_learner(self, method: Method) -> Learner:
        cfg = self.cfg
        cls = LEARNERS.get(method.learner)
        factory, _, class_text = self._text_inputs()
        if cls.requires_class_text and class_text is None:
            raise UnsupportedSetting(f"learner {method.learner!r} needs class-level text, which dataset "
                                     f"{cfg.dataset!r} does not have")
        torch.manual_seed(self.seeds["init"])
        spec = ModelSpec(
            modalities=method.modalities, setting=self.setting, image_shape=self.dataset.image_shape,
            backbone=cfg.backbone, backbone_options=dict(cfg.backbone_options),
            text_encoder=factory() if ("text" in method.modalities or cls.requires_class_text) else None,
            fusion=method.fusion, fusion_options=dict(cfg.fusion_options.get(method.fusion or "", {})),
            n_train_classes=len(self.dataset.split_classes("train")),
            train_class_ids=tuple(int(c) for c in self.dataset.split_classes("train")),
        )
        config = component_config(cls.Config, cfg.learner_options.get(method.learner, {}),
                                  f"learner_options.{method.learner}")
        try:
            return cls(spec, config).to(self.device)
        except TypeError as err:
            raise BenchmarkError(f"options for {method.label}: {err}") from None

    def train(self, learner: Learner, method: Method) -> dict:
        """Meta-train ``method``'s learner on episodes shown as at test time; returns its history
        (see :func:`benchmark.training.meta_train`)."""
        return meta_train(learner, method, train_config(self.cfg, method.learner),
                          lambda: self._loader(self.setting, learner), self.samplers[method.learner],
                          self.val_manifest, self.device, self.seeds["train_episodes"],
                          self.train_checkpoint(method), self.resume,
                          TrainLog(self.run_dir / "train_log" / f"{method.slug}.csv"))

    def train_checkpoint(self, method: Method) -> Path:
        """Where the resumable training state of ``method`` is kept while it trains."""
        return self.run_dir / "checkpoints" / f"{method.slug}.train.pt"

    def run_method(self, method: Method) -> list[dict]:
        start = time.perf_counter()
        try:
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        except OSError as err:
            raise BenchmarkError(f"cannot create {self.run_dir / 'checkpoints'}: {err.strerror or err}") from None
        learner = self.build_learner(method)
        history = self.train(learner, method)
        checkpoint = self.run_dir / "checkpoints" / f"{method.slug}.pt"
        import io

        buffer = io.BytesIO()
        torch.save(learner.state_dict(), buffer)
        atomic_write_bytes(checkpoint, buffer.getvalue())
        loader = self._loader(self.setting, learner)
        rows = []
        for (way, shot), (manifest, _) in self.test_manifests.items():
            metrics = evaluate(learner, loader, manifest, self.device, progress=f"test {method.label} {way}w{shot}s")
            common = {
                "run_id": self.run_id, "learner": method.learner, "fusion": method.fusion or "none",
                "modalities": "+".join(method.modalities), "schema_version": SCHEMA_VERSION,
                "setting": method_setting(self.setting.support, self.setting.query, method.modalities),
                "dataset": self.cfg.dataset, "n_way": way, "n_shot": shot, "n_query": manifest.n_query,
                "seed": self.cfg.seed, "manifest_sha256": manifest.sha256,
            }
            for name, values in metrics.items():
                rows += [{**common, "episode": i, "metric": name, "value": float(v)} for i, v in enumerate(values)]
        self.method_records[method.slug] = {
            **history, "wall_time_s": round(time.perf_counter() - start, 2), "checkpoint": str(checkpoint),
            "parameters": sum(p.numel() for p in learner.parameters()),
        }
        return rows

    # -- the whole run ------------------------------------------------------------------------
    def _write_run_json(self, status: str, start: float) -> None:
        record = {
            "schema_version": SCHEMA_VERSION, "run_id": self.run_id, "status": status, "config": to_dict(self.cfg), "seeds": self.seeds,
            "setting": dataclasses.asdict(self.setting),
            "dataset": {"name": self.cfg.dataset, "fingerprint": getattr(self, "dataset", None)
                        and self.dataset.fingerprint(), "image_shape": getattr(self, "dataset", None)
                        and list(self.dataset.image_shape)},
            "manifests": {f"{w}w{s}s": {"sha256": m.sha256, "path": str(p)}
                          for (w, s), (m, p) in getattr(self, "test_manifests", {}).items()},
            "val_manifest_sha256": getattr(self, "val_manifest", None) and self.val_manifest.sha256,
            "methods": self.method_records, "skipped": getattr(self, "skipped", {}), "git_commit": git_commit(), "packages": package_versions(),
            "device": str(self.device), "torch_threads": torch.get_num_threads(),
            "allocator": getattr(self, "allocator", None),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "host": platform.node(), "platform": platform.platform(),
            "wall_time_s": round(time.perf_counter() - start, 2),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
        }
        atomic_write_text(self.run_dir / "run.json", json.dumps(record, indent=2, default=jsonable))

    def run(self) -> pd.DataFrame:
        """Run every method not yet in ``rows.jsonl``, holding the run-folder lock.

        Raises:
            BenchmarkError: another process holds the lock (the same config into the same --out).
        """
        with RunLock(self.run_dir):
            if not self.resume:
                self._set_aside_previous()
            return self._run()

    def _set_aside_previous(self) -> None:
        """``--no-resume``: move earlier results and checkpoints of this run to ``replaced-<time>/``."""
        names = [n for n in ("rows.jsonl", "summary.csv", "summary.md", "run.json", "checkpoints", "train_log")
                 if (self.run_dir / n).exists()]
        if not names:
            return
        backup = self.run_dir / time.strftime("replaced-%Y%m%d-%H%M%S")
        try:
            backup.mkdir()
            for name in names:
                os.replace(self.run_dir / name, backup / name)
        except OSError as err:
            raise BenchmarkError(f"cannot move earlier results of {self.run_dir} aside: {err}") from None
        log.info("--no-resume: earlier results of this run moved to %s", backup)

    def _run(self) -> pd.DataFrame:
        start = time.perf_counter()
        self.allocator = keep_freed_memory()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.method_records: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}
        previous = self.run_dir / "run.json"
        if previous.exists():
            try:
                self.method_records = json.loads(previous.read_text()).get("methods", {})
            except (OSError, ValueError):
                pass
        rows_path = self.run_dir / "rows.jsonl"
        done = set()
        existing = read_rows(rows_path)
        if not existing.empty:
            done = {f"{r.learner}-{r.modalities}-{r.fusion}" for r in existing.itertuples()}
        self._write_run_json("running", start)
        try:
            self._load_data()
            self._preflight()
            for i, method in enumerate(self.methods, 1):
                if method.slug in done:
                    log.info("[%d/%d] %s: already in %s, skipped", i, len(self.methods), method.label, rows_path)
                    continue
                log.info("[%d/%d] %s", i, len(self.methods), method.label)
                rows = self.run_method(method)
                append_rows(rows_path, rows)  # atomic: the method is in the file entirely or not at all
                done.add(method.slug)
                self.train_checkpoint(method).unlink(missing_ok=True)  # finished: its rows are the record
                write_summary(self.run_dir)
                self._write_run_json("running", start)
        except KeyboardInterrupt:
            self._write_run_json_quietly("interrupted", start)
            raise
        except BaseException:
            self._write_run_json_quietly("failed", start)
            raise
        table = write_summary(self.run_dir)
        write_tables([self.run_dir], self.run_dir)
        self._write_run_json("finished", start)
        return table

    def _write_run_json_quietly(self, status: str, start: float) -> None:
        """Record the status on the way out, without hiding the original error (e.g. a full disk)."""
        try:
            self._write_run_json(status, start)
        except BenchmarkError as err:
            log.warning("could not update run.json: %s", err)
