"""The harness: meta-train each method with validation-based model selection,
evaluate it on fixed test manifests and write rows, summaries and ``run.json``."""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from benchmark import distributed
from benchmark.checkpoint import RunLock, check_state_dict, read_model, save_model
from benchmark.config import ExperimentConfig, component_config, train_config
from benchmark.evaluate import evaluate
from benchmark.methods import Method, check_names, check_options, expand_methods, fit_to_captions
from benchmark.provenance import resolve_device
from benchmark.plugins import LOADED as PLUGINS
from benchmark.results import episode_rows, previous_method_records, run_record, write_run_record
from benchmark.rowcheck import RowsCheck, check_rows, describe_rows, recorded_rows, replace_rows, set_aside_damaged
from benchmark.rundir import config_hash  # noqa: F401  (where callers have found it)
from benchmark.rundir import adopt_legacy_folder, legacy_run_ids, prepare_output, run_id, seeds, set_aside_previous
from benchmark.runtime import keep_freed_memory
from benchmark.tablewrite import write_summary, write_tables
from benchmark.trainlog import TrainLog
from benchmark.savedmodel import describe, text_corpus
from benchmark.training import meta_train
from learners import LEARNERS, TEXT_ENCODERS, Learner, ModelSpec
from tasks.datasets import FewShotDataset, load_dataset
from tasks.episode import EpisodeLoader, TaskSetting, parse_modalities
from tasks.errors import BenchmarkError, UnsupportedSetting
from tasks.sampler import EpisodeManifest, EpisodeSampler

log = logging.getLogger(__name__)


def finished_methods(rows_path: Path) -> set[str]:
    """Slugs of the methods whose rows are in ``rows_path`` and complete, as far as ``run.json`` beside it
    records (:func:`benchmark.rowcheck.check_rows`): a resumed run skips them."""
    return check_rows(Path(rows_path).parent, rows_path).finished


def trains(bench: Benchmark, method: Method, check: RowsCheck) -> bool:
    """Whether a resumed run trains ``method``: not when its rows are complete, nor when its lost rows
    are recomputed from its saved model (:meth:`Benchmark.retest`)."""
    if method.slug in check.finished:
        return False
    return method.slug not in check.damaged or not bench.saved_model(method).exists()


@dataclasses.dataclass(frozen=True)
class TextInputs:
    """The run's text, prepared once: a factory of fresh text encoders (fitted on the training
    split's text), the prepared item text ``[n_items, ...]`` and class text ``[n_classes, ...]``
    (``None`` where the dataset has none)."""

    factory: Callable[[], nn.Module]
    item: object | None
    klass: object | None


class Benchmark:
    """Runs an :class:`ExperimentConfig` end to end. ``run()`` returns the summary table.

    For finer use (evaluating a checkpoint, reproducing a number): :meth:`prepare` loads the data
    and fixes the episodes, then :meth:`build_learner`, :meth:`episode_loader`, :meth:`test` and
    :attr:`test_manifests` give what a run would use.
    """

    def __init__(self, cfg: ExperimentConfig, resume: bool = True, dataset: FewShotDataset | None = None) -> None:
        """With a data root, the dataset is loaded here (or ``dataset`` is used): its contents name the
        run (:func:`benchmark.rundir.config_hash`), and :meth:`prepare` uses it without loading it again."""
        self.cfg = cfg.validate()
        self.resume = resume  # continue from training checkpoints of an unfinished run (else start over)
        check_names(cfg)
        check_options(cfg)
        self.methods = expand_methods(cfg)
        if not self.methods:
            raise BenchmarkError("no method to run: check --learners, --modalities and --fusions")
        self.setting = TaskSetting(parse_modalities(cfg.eval.support_modalities, "eval.support_modalities"),
                                   parse_modalities(cfg.eval.query_modalities, "eval.query_modalities"))
        self.device = resolve_device(cfg.device)
        self.seeds = seeds(cfg.seed)
        self.dataset: FewShotDataset | None = dataset
        if cfg.data_root is not None and dataset is None:  # loaded once: for the id, then by prepare()
            self.dataset = load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options)
        self._id_fingerprint = self.dataset.fingerprint() if cfg.data_root is not None else None
        self.run_id = run_id(cfg, self._id_fingerprint)
        self.run_dir = prepare_output(cfg.out, adopt_legacy_folder(cfg.out, self.run_id, legacy_run_ids(cfg)).name)
        self.manifest_dir = Path(cfg.out) / "manifests"
        # built by prepare():
        self.prepared = False
        self.samplers: dict[str, EpisodeSampler] = {}  # training episodes per learner
        self.val_manifest: EpisodeManifest | None = None
        self.test_manifests: dict[tuple[int, int], tuple[EpisodeManifest, Path]] = {}  # (way, shot) -> (manifest, file)
        self.text: TextInputs | None = None
        self.skipped: dict[str, str] = {}  # method label -> why it cannot run in this setting
        self.method_records: dict[str, dict] = {}  # filled by run(): slug -> training history, wall time, model
        self.rows_record: dict[str, dict] = {}  # filled by run(): slug -> what it wrote to rows.jsonl (rowcheck)
        self.allocator: dict[str, object] | None = None

    # -- data ---------------------------------------------------------------------------------
    def prepare(self, dataset: FewShotDataset | None = None) -> Benchmark:
        """Load the dataset (or use ``dataset``), fix the validation and test episodes, prepare the
        text and build every method once (so impossible settings fail early). Idempotent.

        Raises:
            UnsupportedSetting: no requested method can run on this dataset and setting.
        """
        if self.prepared:
            return self
        cfg = self.cfg
        if dataset is not None and self._id_fingerprint not in (None, dataset.fingerprint()):
            raise BenchmarkError(f"run {self.run_id} is named by the contents of the data under {cfg.data_root}; "
                                 f"the dataset given to prepare() has other contents: pass it to Benchmark() instead")
        if dataset is None:
            dataset = self.dataset or load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options)
        self.dataset = dataset
        self.methods, self.setting = fit_to_captions(self.methods, self.setting, self.dataset, cfg.dataset)
        for learner in dict.fromkeys(m.learner for m in self.methods):  # built now: impossible episodes fail early
            train = train_config(cfg, learner)
            keys = tuple(f"train{'_overrides.' + learner if cfg.train_overrides.get(learner) else ''}.{k}"
                         for k in ("way", "shot", "query"))  # named in the error of an impossible episode
            self.samplers[learner] = EpisodeSampler(self.dataset, "train", train.way, train.shot, train.query, keys)
        validates = any(train_config(cfg, m.learner).val_every for m in self.methods)
        self.val_manifest = EpisodeManifest.get(
            self.manifest_dir, self.dataset, "val", cfg.train.val_way, cfg.train.val_shot, cfg.train.val_query,
            cfg.train.val_episodes, self.seeds["manifest"], ("train.val_way", "train.val_shot", "train.val_query"),
        )[0] if validates else None
        for way in cfg.eval.ways:
            for shot in cfg.eval.shots:
                self.test_manifests[(way, shot)] = EpisodeManifest.get(
                    self.manifest_dir, self.dataset, "test", way, shot, cfg.eval.query, cfg.eval.episodes,
                    self.seeds["manifest"], ("--ways", "--shots", "--queries"))
        self.text = self._prepare_text()
        self._preflight()
        self.prepared = True
        return self

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

    def _prepare_text(self) -> TextInputs:
        """The text encoder factory and the prepared item and class text, computed once per run."""
        cfg, data = self.cfg, self.dataset
        corpus = text_corpus(data)
        cls = TEXT_ENCODERS.get(cfg.text_encoder)
        options = dict(cfg.text_encoder_options)
        encoder = cls(corpus, **options)  # options checked in __init__ (methods.check_options)
        item = encoder.prepare(data.captions) if data.captions is not None else None
        klass = encoder.prepare(data.class_texts) if data.class_texts is not None else None
        return TextInputs(lambda: cls(corpus, **options), item, klass)

    def _prepared(self) -> TextInputs:
        if self.text is None:
            raise RuntimeError("call Benchmark.prepare() first: the data is not loaded yet")
        return self.text

    def episode_loader(self, learner: Learner | None = None, setting: TaskSetting | None = None) -> EpisodeLoader:
        """Episodes as ``learner`` sees them (pixels, or cached features when its image backbone is
        frozen), showing ``setting``'s modalities (default: the run's)."""
        text = self._prepared()
        return EpisodeLoader(self.dataset.images, self.dataset.mean, self.dataset.std, text.item, text.klass,
                             setting or self.setting, image_features=self._image_features(learner))

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
        """A freshly initialised learner for ``method`` (seeded: the same weights every call).

        Raises:
            UnsupportedSetting: the learner cannot run on this dataset (e.g. it needs class text).
        """
        cfg, text = self.cfg, self._prepared()
        cls = LEARNERS.get(method.learner)
        if cls.requires_class_text and text.klass is None:
            raise UnsupportedSetting(f"learner {method.learner!r} needs class-level text, which dataset "
                                     f"{cfg.dataset!r} does not have")
        torch.manual_seed(self.seeds["init"])
        spec = ModelSpec(
            modalities=method.modalities, setting=self.setting, image_shape=self.dataset.image_shape,
            backbone=cfg.backbone, backbone_options=dict(cfg.backbone_options),
            text_encoder=text.factory() if ("text" in method.modalities or cls.requires_class_text) else None,
            fusion=method.fusion, fusion_options=dict(cfg.fusion_options.get(method.fusion or "", {})),
            n_train_classes=len(self.dataset.split_classes("train")),
            train_class_ids=tuple(int(c) for c in self.dataset.split_classes("train")),
        )
        config = component_config(cls.Config, cfg.learner_options.get(method.learner, {}),
                                  f"learner_options.{method.learner}")
        return cls(spec, config).to(self.device)  # fusion and backbone options checked in __init__

    def train(self, learner: Learner, method: Method) -> dict:
        """Meta-train ``method``'s learner on episodes shown as at test time; returns its history
        (see :func:`benchmark.training.meta_train`)."""
        train = train_config(self.cfg, method.learner)
        loader = None

        def make_loader() -> EpisodeLoader:
            nonlocal loader
            loader = loader or self.episode_loader(learner)
            return loader

        return meta_train(learner, method, train, make_loader, self.gate_tracking(learner, method, train, make_loader),
                          self.val_manifest, self.device, self.seeds["train_episodes"],
                          self.train_checkpoint(method), self.resume,
                          TrainLog(self.run_dir / "train_log" / f"{method.slug}.csv"))

    def gate_tracking(self, learner: Learner, method: Method, train, make_loader: Callable[[], EpisodeLoader]):
        """The method's training sampler, wrapped to record its class-text gate every ``train.gate_every``
        steps to ``gates/<slug>.jsonl`` (:mod:`benchmark.gates`) when it has one (AM3's ``mixing``) and the
        run has class text; else the sampler itself. The tracked episodes are ``train.gate_episodes``
        fixed val-protocol episodes per split, seeded from the run's manifest seed."""
        sampler = self.samplers[method.learner]
        if not train.gate_every or not hasattr(learner, "mixing") or self._prepared().klass is None \
                or not distributed.current().is_main:
            return sampler
        from benchmark.gates import GateTracker, TrackingSampler

        manifests = {split: EpisodeManifest.generate(self.dataset, split, train.val_way, train.val_shot,
                                                     train.val_query, train.gate_episodes, self.seeds["manifest"])
                     for split in ("train", "val", "test")}
        path = self.run_dir / "gates" / f"{method.slug}.jsonl"
        path.parent.mkdir(exist_ok=True)
        if not self.resume and path.exists():
            path.unlink()
        return TrackingSampler(sampler, GateTracker(learner, make_loader(), self.dataset, manifests, path,
                                                    train.gate_every))

    def test(self, learner: Learner, method: Method) -> list[dict]:
        """Evaluate ``learner`` on every test manifest; the rows of ``rows.jsonl`` (one per episode and metric)."""
        loader = self.episode_loader(learner)
        rows = []
        for (way, shot), (manifest, _) in self.test_manifests.items():
            metrics = evaluate(learner, loader, manifest, self.device, progress=f"test {method.label} {way}w{shot}s")
            rows += episode_rows(self.run_id, method, self.setting, self.cfg, manifest, metrics)
        return rows

    def train_checkpoint(self, method: Method) -> Path:
        """Where the resumable training state of ``method`` is kept while it trains."""
        return self.run_dir / "checkpoints" / f"{method.slug}.train.pt"

    def saved_model(self, method: Method) -> Path:
        """Where the selected model of ``method`` is saved once it has trained."""
        return self.run_dir / "checkpoints" / f"{method.slug}.pt"

    def retest(self, method: Method) -> list[dict]:
        """The rows of a finished ``method`` whose rows were lost: its saved model tested again (the
        rows it wrote: testing is deterministic), or, without a saved model, the method trained again.

        Raises:
            BenchmarkError: the saved model cannot be read or does not fit the method (names the file).
        """
        path = self.saved_model(method)
        if not path.exists():
            log.warning("%s: no saved model %s; training it again", method.label, path)
            return self.run_method(method)
        state, _ = read_model(path)
        learner = self.build_learner(method)
        check_state_dict(learner, state, f"saved model {path}", f"Delete it to train {method.label} again")
        learner.load_state_dict(state)
        log.info("%s: testing its saved model %s again", method.label, path)
        return self.test(learner, method)

    def run_method(self, method: Method) -> list[dict]:
        """Train, save and test one method; its rows (its record goes to :attr:`method_records`)."""
        start = time.perf_counter()
        try:
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        except OSError as err:
            raise BenchmarkError(f"cannot create {self.run_dir / 'checkpoints'}: {err.strerror or err}") from None
        learner = self.build_learner(method)
        history = self.train(learner, method)
        checkpoint = self.saved_model(method)
        save_model(checkpoint, learner, describe(self.cfg, method, self.dataset, self.setting))  # self-describing
        rows = self.test(learner, method)
        self.method_records[method.slug] = {
            **history, "wall_time_s": round(time.perf_counter() - start, 2), "checkpoint": str(checkpoint),
            "parameters": sum(p.numel() for p in learner.parameters()),
        }
        return rows

    # -- the whole run ------------------------------------------------------------------------
    def run(self) -> pd.DataFrame:
        """Run every method not yet in ``rows.jsonl``, holding the run-folder lock; recompute the rows of a
        method that ``rows.jsonl`` lost (see :mod:`benchmark.rowcheck`), replacing what is left of them.

        Raises:
            BenchmarkError: another process holds the lock (the same config into the same --out).
        """
        with RunLock(self.run_dir):
            if not self.resume:
                set_aside_previous(self.run_dir)
            return self._run()

    def _run(self) -> pd.DataFrame:
        start = time.perf_counter()
        self.allocator = keep_freed_memory()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.method_records = previous_method_records(self.run_dir)
        self.rows_record = recorded_rows(self.run_dir) or {}
        rows_path = self.run_dir / "rows.jsonl"
        check = self._check_rows(rows_path)
        damaged = not check.ok  # set aside (copied) before it is first rewritten
        self._write_run_json("running", start)
        try:
            self.prepare()
            for i, method in enumerate(self.methods, 1):
                if method.slug in check.finished:
                    log.info("[%d/%d] %s: already in %s, skipped", i, len(self.methods), method.label, rows_path)
                    continue
                log.info("[%d/%d] %s", i, len(self.methods), method.label)
                rows = self.retest(method) if method.slug in check.damaged else self.run_method(method)
                self.rows_record[method.slug] = describe_rows(rows)
                self._write_run_json("running", start)  # the record first: rows lost after it are detected
                if damaged:
                    log.info("the damaged rows file is copied to %s", set_aside_damaged(rows_path))
                    damaged = False
                replace_rows(rows_path, method.slug, rows)  # atomic: all of the method's rows or none, once
                self.train_checkpoint(method).unlink(missing_ok=True)  # finished: its rows are the record
                write_summary(self.run_dir, warn=False)  # damaged rows of later methods are being repaired
        except KeyboardInterrupt:
            self._write_run_json_quietly("interrupted", start)
            raise
        except BaseException as err:
            self._write_run_json_quietly("failed", start, f"{type(err).__name__}: {err}")
            raise
        table = write_summary(self.run_dir)
        write_tables([self.run_dir], self.run_dir, warn=False)  # write_summary has warned
        self._write_run_json("finished", start)
        return table

    def _check_rows(self, rows_path: Path) -> RowsCheck:
        """Check ``rows.jsonl`` against the record of what was written, and say what will be recomputed."""
        check = check_rows(self.run_dir, rows_path)
        if not check.ok:
            redo = ", ".join(sorted(check.damaged)) or "nothing (run.json has no record of what was written)"
            log.warning("%s. Recomputing %s (from its saved model where there is one, else trained again); "
                        "intact methods are kept", check.describe(), redo)
        return check

    def _write_run_json(self, status: str, start: float, error: str | None = None) -> None:
        record = {**run_record(self, status, time.perf_counter() - start), "plugins": dict(PLUGINS),  # with sha256
                  **({"error": error} if error else {})}
        record["dataset"]["info"] = self.dataset and self.dataset.info  # e.g. the columns and class text used
        write_run_record(self.run_dir, record)

    def _write_run_json_quietly(self, status: str, start: float, error: str | None = None) -> None:
        """Record the status (and the error) on the way out, without hiding the original error (e.g. a full disk)."""
        try:
            self._write_run_json(status, start, error)
        except BenchmarkError as err:
            log.warning("could not update run.json: %s", err)
