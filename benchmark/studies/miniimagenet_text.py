"""miniImageNet image + class text on a frozen image backbone (issue 16, steps 2, 4 and 5).

From a trained backbone checkpoint: every item's Conv-4 features go through the feature cache
(backbone ``conv4_frozen``), each class's WordNet "lemmas: gloss" text through frozen MiniLM.
Queries are images; class text joins the support side. Every method of :data:`METHODS` is
meta-trained on features for each test shot, evaluated on one fixed manifest per setting (5w1s,
5w5s; 600 episodes, 15 queries) and compared, episode by episode, with image-only ProtoNet.
The AM3 methods' gates are tracked during training (:mod:`benchmark.studies.classtext`) and the
class-text methods are evaluated with text for a fraction p of the test classes.

Run (see docs/findings-miniimagenet-text.md for the full commands)::

    python -m benchmark.studies.miniimagenet_text --data-root ../shared/data \\
        --checkpoint <run>/checkpoints/protonet-image-none.pt --out results/miniimagenet_text/study

Writes into ``--out``: ``rows.jsonl`` (per episode; and ``rows.jsonl.gz``, the copy to commit), ``summary.csv``/``.md``, ``comparison.csv``/``.md``
(paired vs ProtoNet), ``text_gain.csv``/``.md`` (paired vs each fusion's image-only control), ``missing_text.csv``, ``gates.jsonl`` and ``gates.csv``, ``study.json``,
``manifests/`` and ``checkpoints/``. A rerun skips the (method, shot) pairs already in ``rows.jsonl``
and resumes an interrupted training from its checkpoint.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmark.config import TrainConfig, component_config
from benchmark.evaluate import evaluate
from benchmark.methods import Method
from benchmark.provenance import git_commit
from benchmark.results import append_rows, atomic_save, atomic_write_text, read_rows
from benchmark.studies import classtext
from benchmark.training import meta_train
from learners import LEARNERS, TEXT_ENCODERS, ModelSpec
from tasks.datasets import load_dataset
from tasks.episode import EpisodeLoader, TaskSetting
from tasks.errors import BenchmarkError, UnsupportedSetting
from tasks.sampler import EpisodeManifest, EpisodeSampler

log = logging.getLogger(__name__)

BASELINE = "protonet"
#: label -> (learner, options). Citations: ProtoNet (Snell et al. 2017), AM3 (Xing et al. 2019);
#: the gate variants and the class-text fusions are this suite's (see learners/am3.py, classfusion.py).
METHODS: dict[str, tuple[str, dict]] = {
    "protonet": ("protonet", {}),
    "text_only": ("am3", {"force_gate": 0.0}),
    "am3": ("am3", {}),
    "am3_gate_init": ("am3", {"gate_bias": 2.0}),
    "am3_gate_reg": ("am3", {"gate_reg": 1.0, "gate_target": 0.5}),
    "am3_text_dropout": ("am3", {"text_dropout": 0.5}),
    "fusion_attention": ("classfusion", {"fusion": "attention"}),
    "fusion_gated": ("classfusion", {"fusion": "gated"}),
    "fusion_film": ("classfusion", {"fusion": "film"}),
    "fusion_mean": ("classfusion", {"fusion": "mean"}),
    "fusion_lowrank": ("classfusion", {"fusion": "lowrank"}),
    "fusion_late": ("classfusion", {"fusion": "late"}),  # rejected: needs text on the queries
    # Image-only controls: the same fusion trained and tested without class text (its learned image
    # path alone), so that fusion_X - control_X is what the text adds at an equal learned transform.
    # FiLM's and the gated fusion's image paths are the identity: their control is ProtoNet itself.
    "control_attention": ("classfusion", {"fusion": "attention", "class_text": False}),
    "control_mean": ("classfusion", {"fusion": "mean", "class_text": False}),
    "control_lowrank": ("classfusion", {"fusion": "lowrank", "class_text": False}),
}
#: method -> the method whose trained text map ``g`` (``transform.*``) it starts from: AM3 with a text side
#: that already separates classes, to test whether the gate collapses because ``g`` starts uninformative.
WARM_STARTS: dict[str, str] = {"am3_text_warm": "text_only"}
METHODS["am3_text_warm"] = ("am3", {})
#: class-text method -> its image-only control (the ``text_gain`` table)
CONTROLS: dict[str, str] = {**{f"fusion_{name}": f"control_{name}" for name in ("attention", "mean", "lowrank")},
                            "fusion_film": "protonet", "fusion_gated": "protonet"}


@dataclass
class StudyConfig:
    """What the study computes (``--help`` of the CLI documents each field)."""

    data_root: str
    checkpoint: str
    out: str = "results/miniimagenet_text/study"
    image_size: int = 84
    max_per_class: int | None = None
    classes_per_split: int | None = None
    hidden: int = 64
    l2_scale: float | None = None  # frozen features L2-normalised and scaled (see learners.pretrained.FrozenConv4)
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    shots: list[int] = field(default_factory=lambda: [1, 5])
    way: int = 5
    query: int = 15
    test_episodes: int = 600
    # the classes each method is scored on: "test" for the reported numbers, "val" to choose among the
    # methods (select_fusion); a choice never reads "test" (benchmark.selection)
    eval_split: str = "test"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        way=20, query=15, episodes=3000, lr_decay_every=1000, val_every=500, val_episodes=200, checkpoint_every=500))
    gate_every: int = 250
    gate_episodes: int = 100
    text_fractions: list[float] = field(default_factory=lambda: list(classtext.TEXT_FRACTIONS))
    seed: int = 0
    device: str = "cpu"

    def check(self) -> "StudyConfig":
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise BenchmarkError(f"unknown study method(s) {unknown}; choose from {list(METHODS)}")
        if BASELINE not in self.methods:
            raise BenchmarkError(f"the study compares every method with {BASELINE!r}: keep it in --methods")
        for p in self.text_fractions:
            if not 0.0 <= p <= 1.0:
                raise BenchmarkError(f"--text-fractions: {p} is not in [0, 1]")
        checks = [("--shots", s, 1) for s in self.shots] + [
            ("--test-episodes", self.test_episodes, 1), ("--train-episodes", self.train.episodes, 0),
            ("--train-way", self.train.way, 2), ("--gate-every", self.gate_every, 0),
            ("--gate-episodes", self.gate_episodes, 1), ("--val-episodes", self.train.val_episodes, 1),
            ("--val-every", self.train.val_every, 0), ("--lr-decay-every", self.train.lr_decay_every, 0)]
        for flag, value, low in checks:
            if value < low:
                raise BenchmarkError(f"{flag} {value} is out of range: it must be >= {low}")
        if not self.shots:
            raise BenchmarkError("--shots is empty; give at least one, e.g. --shots 1,5")
        if self.eval_split not in ("test", "val"):
            raise BenchmarkError(f"--eval-split {self.eval_split!r}: choose test (the reported numbers) or val "
                                 "(to choose among the methods)")
        if self.eval_split == "val" and any(p != 1.0 for p in self.text_fractions):
            raise BenchmarkError("--eval-split val scores the methods with all class text: give --text-fractions 1")
        return self


class Study:
    """Runs a :class:`StudyConfig`; ``run()`` returns the comparison table."""

    def __init__(self, cfg: StudyConfig) -> None:
        self.cfg = cfg.check()
        self.out = Path(cfg.out)
        try:
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BenchmarkError(f"cannot create the study folder {self.out}: {err.strerror or err}; "
                                 "choose another --out") from None
        self.device = torch.device(cfg.device)
        self.dataset = load_dataset("miniimagenet", cfg.data_root, image_size=cfg.image_size,
                                    max_per_class=cfg.max_per_class, classes_per_split=cfg.classes_per_split)
        self.text_encoder = TEXT_ENCODERS.get("minilm")()
        self.class_text = self.text_encoder.prepare(self.dataset.class_texts)  # [n_classes, 384]
        self.setting = TaskSetting(("image",), ("image",))
        self.skipped: dict[str, str] = {}
        self.features = None

    def manifest(self, split: str, shot: int, episodes: int) -> EpisodeManifest:
        return EpisodeManifest.get(self.out / "manifests", self.dataset, split, self.cfg.way, shot, self.cfg.query,
                                   episodes, self.cfg.seed)[0]

    def backbone_options(self) -> dict:
        options = {"checkpoint": self.cfg.checkpoint, "hidden": self.cfg.hidden}
        return options if self.cfg.l2_scale is None else {**options, "l2_scale": self.cfg.l2_scale}

    def build(self, label: str):
        """The learner of study method ``label`` on the frozen backbone (features computed once)."""
        name, options = METHODS[label]
        cls = LEARNERS.get(name)
        torch.manual_seed(self.cfg.seed)
        spec = ModelSpec(modalities=("image",), setting=self.setting, image_shape=self.dataset.image_shape,
                         backbone="conv4_frozen", backbone_options=self.backbone_options(),
                         text_encoder=self.text_encoder)
        learner = cls(spec, component_config(cls.Config, options, f"study method {label}")).to(self.device)
        if self.features is None:
            self.features = learner.encoder.encoders["image"].precompute(self.dataset, self.device)
        return learner

    def loader(self) -> EpisodeLoader:
        return EpisodeLoader(self.dataset.images, self.dataset.mean, self.dataset.std, None, self.class_text,
                             self.setting, image_features=self.features)

    def train(self, label: str, shot: int):
        """Build and meta-train ``label`` for ``shot``-shot tests; returns ``(learner, history)``."""
        learner = self.build(label)
        if label in WARM_STARTS:
            self.warm_start(learner, WARM_STARTS[label], shot)
        train = TrainConfig(**{**self.cfg.train.__dict__, "shot": shot, "val_shot": shot, "val_way": self.cfg.way})
        sampler = EpisodeSampler(self.dataset, "train", train.way, train.shot, train.query)
        loader = self.loader()
        if hasattr(learner, "mixing") and METHODS[label][1].get("force_gate") is None:
            manifests = {s: self.manifest(s, shot, self.cfg.gate_episodes) for s in ("train", "val", "test")}
            tracker = classtext.GateTracker(learner, loader, self.dataset, manifests,
                                            self.out / f"gates-{label}-{shot}shot.jsonl", self.cfg.gate_every)
            sampler = classtext.TrackingSampler(sampler, tracker)
        method = Method(f"{label}-{shot}shot", ("image",), None)
        history = meta_train(learner, method, train, lambda: loader, sampler,
                             self.manifest("val", shot, train.val_episodes) if train.val_every else None,
                             self.device, self.cfg.seed + 1, self.out / "checkpoints" / f"{label}-{shot}shot.train.pt",
                             resume=True)
        return learner, history

    def warm_start(self, learner, source: str, shot: int) -> None:
        """Copy the text map ``g`` (``transform.*``) of the trained ``source`` head into ``learner``."""
        path = self.out / "checkpoints" / f"{source}-{shot}shot.pt"
        if not path.is_file():
            raise BenchmarkError(f"{path} does not exist: the warm start needs {source!r} trained first at "
                                 f"{shot}-shot in this study folder (run --methods protonet,{source} first)")
        head = torch.load(path, map_location=self.device, weights_only=True)
        learner.load_state_dict({k: v for k, v in head.items() if k.startswith("transform.")}, strict=False)

    def run_method(self, label: str, shot: int) -> list[dict]:
        """Train, evaluate (all text, then each text fraction) and save one (method, shot)."""
        start = time.perf_counter()
        learner, history = self.train(label, shot)
        head = {k: v for k, v in learner.state_dict().items() if not k.startswith("encoder.")}
        atomic_save(self.out / "checkpoints" / f"{label}-{shot}shot.pt", lambda f: torch.save(head, f))
        manifest, loader = self.manifest(self.cfg.eval_split, shot, self.cfg.test_episodes), self.loader()
        results = {1.0: evaluate(learner, loader, manifest, self.device)["accuracy"]}
        if hasattr(learner, "set_class_text_available") and METHODS[label][1].get("class_text", True):
            fractions = [p for p in self.cfg.text_fractions if p != 1.0]
            results.update(classtext.evaluate_missing_text(learner, loader, manifest, self.dataset, fractions,
                                                           self.device, self.cfg.seed))
        common = {"method": label, "learner": METHODS[label][0], "options": json.dumps(METHODS[label][1]),
                  "n_way": self.cfg.way, "n_shot": shot, "n_query": self.cfg.query, "split": self.cfg.eval_split,
                  "manifest_sha256": manifest.sha256, "metric": "accuracy",
                  "best_step": history.get("best_step"), "wall_time_s": round(time.perf_counter() - start, 1)}
        return [{**common, "text_fraction": p, "episode": i, "value": float(v)}
                for p, values in results.items() for i, v in enumerate(values)]

    def run(self):
        """Every (method, shot) not yet in ``rows.jsonl``; then the tables."""
        from benchmark.studies.tables import pack_rows, write_tables

        rows_path = self.out / "rows.jsonl"
        existing = read_rows(rows_path)
        done = set() if existing.empty else set(zip(existing["method"], existing["n_shot"]))
        for shot in self.cfg.shots:
            for label in self.cfg.methods:
                if (label, shot) in done or label in self.skipped:
                    continue
                log.info("%s %dw%ds", label, self.cfg.way, shot)
                try:
                    rows = self.run_method(label, shot)
                except UnsupportedSetting as err:
                    log.warning("skipping %s: %s", label, err)
                    self.skipped[label] = str(err)
                    continue
                append_rows(rows_path, rows)
                (self.out / "checkpoints" / f"{label}-{shot}shot.train.pt").unlink(missing_ok=True)
        self.write_record()
        if rows_path.is_file():
            pack_rows(self.out)
        return write_tables(self.out, BASELINE, CONTROLS)

    def write_record(self) -> None:
        record = {"config": {**self.cfg.__dict__, "train": self.cfg.train.__dict__}, "skipped": self.skipped,
                  "dataset": {"fingerprint": self.dataset.fingerprint(), "subset": self.dataset.info["subset"],
                              "image_shape": list(self.dataset.image_shape)},
                  "features": list(self.features.shape) if self.features is not None else None,
                  "methods": {k: {"learner": v[0], "options": v[1]} for k, v in METHODS.items()},
                  "git_commit": git_commit(), "torch_threads": torch.get_num_threads()}
        atomic_write_text(self.out / "study.json", json.dumps(record, indent=2, default=str))


if __name__ == "__main__":
    from benchmark.studies.cli import main

    raise SystemExit(main())
