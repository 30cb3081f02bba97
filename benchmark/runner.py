"""The harness: meta-train each method with validation-based model selection,
evaluate it on fixed test manifests and write rows, summaries and ``run.json``."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmark.config import ExperimentConfig, component_config, to_dict
from benchmark.evaluate import evaluate
from benchmark.results import append_rows, atomic_write_text, jsonable, read_rows, write_summary
from learners import LEARNERS, TEXT_ENCODERS, Learner, ModelSpec
from learners.registry import BACKBONES, FUSIONS
from tasks.datasets import DATASETS, FewShotDataset, load_dataset
from tasks.episode import EpisodeLoader, TaskSetting, parse_modalities
from tasks.errors import BenchmarkError, UnsupportedSetting
from tasks.sampler import EpisodeManifest, EpisodeSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """One learner on one modality setting with one fusion (``None`` for a single modality)."""

    learner: str
    modalities: tuple[str, ...]
    fusion: str | None

    @property
    def label(self) -> str:
        return f"{self.learner}[{'+'.join(self.modalities)}{'/' + self.fusion if self.fusion else ''}]"

    @property
    def slug(self) -> str:
        return f"{self.learner}-{'+'.join(self.modalities)}-{self.fusion or 'none'}"


def expand_methods(cfg: ExperimentConfig) -> list[Method]:
    """Every learner x modality setting, and every fusion for multimodal settings."""
    methods = []
    for learner in cfg.learners:
        cls = LEARNERS.get(learner)
        for text in cfg.modalities:
            modalities = parse_modalities(text, "modalities")
            if "+".join(modalities) not in cls.supports_modalities:
                if len(cfg.modalities) == 1:
                    raise UnsupportedSetting(
                        f"learner {learner!r} does not support modalities {text!r}; "
                        f"it supports {list(cls.supports_modalities)}"
                    )
                log.info("skipping %s on %s: not supported by the learner", learner, text)
                continue
            fusions = cfg.fusions if len(modalities) > 1 else [None]
            methods += [Method(learner, modalities, f) for f in fusions]
    return methods


def check_names(cfg: ExperimentConfig) -> None:
    """Fail fast, before any work, on unknown component names."""
    DATASETS.get(cfg.dataset)
    BACKBONES.get(cfg.backbone)
    TEXT_ENCODERS.get(cfg.text_encoder)
    for name in cfg.learners:
        LEARNERS.get(name)
    for name in cfg.fusions:
        FUSIONS.get(name)
    for name in cfg.learner_options:
        LEARNERS.get(name)


def config_hash(cfg: ExperimentConfig) -> str:
    """Hash of what determines the numbers (not where they are written)."""
    data = to_dict(cfg)
    for key in ("out", "device", "threads", "protocol"):
        data.pop(key)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def seeds(seed: int) -> dict[str, int]:
    """Independent seeds for episode sampling (manifests), model init and training episodes."""
    children = np.random.SeedSequence(seed).spawn(3)
    return {name: int(c.generate_state(1)[0]) for name, c in zip(("manifest", "init", "train_episodes"), children)}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "pandas", "transformers", "datasets", "scipy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return result.stdout.strip() + ("-dirty" if dirty else "") if result.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchmarkError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BenchmarkError(f"--device {name} was asked for but MPS is not available here; use --device cpu")
    return device


def prepare_output(out: str, run_id: str) -> Path:
    """Create ``out/run_id`` and check that it is writable."""
    run_dir = Path(out) / run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise BenchmarkError(
            f"cannot write to the output directory {run_dir}: {err.strerror or err}; choose another --out"
        ) from None
    return run_dir


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Benchmark:
    """Runs an :class:`ExperimentConfig` end to end. ``run()`` returns the summary table."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg.validate()
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
        self.samplers = {  # built now so impossible episodes fail before any training
            "train": EpisodeSampler(self.dataset, "train", cfg.train.way, cfg.train.shot, cfg.train.query),
        }
        self.val_manifest, _ = EpisodeManifest.get(
            self.manifest_dir, self.dataset, "val", cfg.train.val_way, cfg.train.val_shot, cfg.train.val_query,
            cfg.train.val_episodes, self.seeds["manifest"])
        self.test_manifests = {}
        for way in cfg.eval.ways:
            for shot in cfg.eval.shots:
                self.test_manifests[(way, shot)] = EpisodeManifest.get(
                    self.manifest_dir, self.dataset, "test", way, shot, cfg.eval.query, cfg.eval.episodes,
                    self.seeds["manifest"])
        self._text: dict[str, tuple] = {}

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
        """Episodic meta-training with validation-based model selection; keeps the best state."""
        cfg = self.cfg.train
        params = [p for p in learner.parameters() if p.requires_grad]
        history = {"best_step": 0, "best_val_accuracy": None, "val": []}
        if cfg.episodes == 0 or not params:
            return history
        loader = self._loader(self.setting, learner)  # train on episodes shown as at test time
        optimiser = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = (torch.optim.lr_scheduler.StepLR(optimiser, cfg.lr_decay_every, gamma=0.5)
                     if cfg.lr_decay_every else None)
        rng = np.random.default_rng(self.seeds["train_episodes"])
        best_state, best = copy.deepcopy(learner.state_dict()), -1.0
        bar = tqdm(range(1, cfg.episodes + 1), desc=f"train {method.label}", leave=False, mininterval=1)
        for step in bar:
            learner.train()
            episodes = [loader.load(self.samplers["train"].sample(rng, step)).to(self.device)
                        for _ in range(cfg.meta_batch)]
            loss = learner.loss(episodes)
            if not torch.isfinite(loss):
                raise BenchmarkError(f"{method.label}: the training loss became {loss.item()} at step {step}; "
                                     "lower train.lr or set train.grad_clip")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            if step % cfg.val_every == 0 or step == cfg.episodes:
                val = float(evaluate(learner, loader, self.val_manifest, self.device)["accuracy"].mean())
                history["val"].append({"step": step, "loss": float(loss.item()), "val_accuracy": val})
                bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{100 * val:.1f}")
                if val > best:
                    best, best_state = val, copy.deepcopy(learner.state_dict())
                    history.update(best_step=step, best_val_accuracy=val)
        learner.load_state_dict(best_state)
        return history

    def run_method(self, method: Method) -> list[dict]:
        start = time.perf_counter()
        learner = self.build_learner(method)
        history = self.train(learner, method)
        checkpoint = self.run_dir / "checkpoints" / f"{method.slug}.pt"
        checkpoint.parent.mkdir(exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(learner.state_dict(), tmp)
        os.replace(tmp, checkpoint)
        loader = self._loader(self.setting, learner)
        rows = []
        for (way, shot), (manifest, _) in self.test_manifests.items():
            metrics = evaluate(learner, loader, manifest, self.device, progress=f"test {method.label} {way}w{shot}s")
            common = {
                "run_id": self.run_id, "learner": method.learner, "fusion": method.fusion or "none",
                "modalities": "+".join(method.modalities), "setting": self.setting.describe(),
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
            "run_id": self.run_id, "status": status, "config": to_dict(self.cfg), "seeds": self.seeds,
            "setting": dataclasses.asdict(self.setting),
            "dataset": {"name": self.cfg.dataset, "fingerprint": getattr(self, "dataset", None)
                        and self.dataset.fingerprint(), "image_shape": getattr(self, "dataset", None)
                        and list(self.dataset.image_shape)},
            "manifests": {f"{w}w{s}s": {"sha256": m.sha256, "path": str(p)}
                          for (w, s), (m, p) in getattr(self, "test_manifests", {}).items()},
            "val_manifest_sha256": getattr(self, "val_manifest", None) and self.val_manifest.sha256,
            "methods": self.method_records, "git_commit": git_commit(), "packages": package_versions(),
            "device": str(self.device), "torch_threads": torch.get_num_threads(),
            "host": platform.node(), "platform": platform.platform(),
            "wall_time_s": round(time.perf_counter() - start, 2),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
        }
        atomic_write_text(self.run_dir / "run.json", json.dumps(record, indent=2, default=jsonable))

    def run(self) -> pd.DataFrame:
        start = time.perf_counter()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.method_records: dict[str, dict] = {}
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
            for i, method in enumerate(self.methods, 1):
                if method.slug in done:
                    log.info("[%d/%d] %s: already in %s, skipped", i, len(self.methods), method.label, rows_path)
                    continue
                log.info("[%d/%d] %s", i, len(self.methods), method.label)
                rows = self.run_method(method)
                append_rows(rows_path, rows)
                write_summary(self.run_dir)
                self._write_run_json("running", start)
        except KeyboardInterrupt:
            self._write_run_json("interrupted", start)
            raise
        except BaseException:
            self._write_run_json("failed", start)
            raise
        table = write_summary(self.run_dir)
        self._write_run_json("finished", start)
        return table
