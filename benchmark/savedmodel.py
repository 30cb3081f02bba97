"""Self-describing model files: what a trained learner needs to be rebuilt and fed.

:func:`describe` records, beside the weights (:func:`benchmark.checkpoint.save_model`), the learner
and its resolved options, the modalities, fusion, backbone and text encoder (with the training text
the encoder's vocabulary came from), the task setting, the preprocessing of the images (size,
channels, colour mode, resize filter, colour inversion, normalisation statistics), the dataset
(name, options, fingerprint) with its training and validation classes, and the git commit.
:func:`load_learner` rebuilds the learner from such a file; an older bare state dict is rebuilt
from the experiment config it was trained with (``config=``/``--config``) and its dataset, and
:func:`upgrade_checkpoint` writes a self-describing copy of one (the same tensors, checked; its
``upgraded_from`` names the old file's sha256; no absolute path in the metadata).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.checkpoint import check_state_dict, read_model, save_model
from benchmark.config import ExperimentConfig, component_config, load_yaml, merge, to_dict
from benchmark.methods import Method, expand_methods, parse_method
from learners import LEARNERS, TEXT_ENCODERS, Learner, ModelSpec
from tasks.datasets import FewShotDataset, load_dataset
from tasks.episode import TaskSetting, parse_modalities
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)

LACKS = ("the learner and its options, fusion, backbone, text encoder and modalities; the image size, "
         "channels, normalisation statistics and resize filter; the dataset and its training classes")


@dataclass
class LearnerInfo:
    """What :func:`load_learner` attaches to a learner as ``learner.benchmark_info``.

    Attributes:
        path: the checkpoint file.
        meta: the metadata (see :func:`describe`); rebuilt from the config for a bare state dict.
        text_encoder: the text encoder inside the learner (prepares raw text), or ``None``.
        bare: the file was a bare state dict (``meta`` comes from the config, not the file).
    """

    path: Path
    meta: dict[str, Any]
    text_encoder: Any = None
    bare: bool = False


def text_corpus(dataset: FewShotDataset) -> list[str]:
    """The meta-train text a text encoder's vocabulary is built from: train captions, then train class text."""
    train = set(dataset.split_classes("train").tolist())
    corpus = [t for t, y in zip(dataset.captions or [], dataset.labels) if y in train]
    return corpus + [t for c, t in enumerate(dataset.class_texts or []) if c in train]


def describe(cfg: ExperimentConfig, method: Method, dataset: FewShotDataset, setting: TaskSetting) -> dict[str, Any]:
    """Metadata of a learner trained for ``method`` on ``dataset`` under ``cfg`` (JSON-serialisable)."""
    from benchmark.provenance import git_commit

    cls = LEARNERS.get(method.learner)
    options = component_config(cls.Config, cfg.learner_options.get(method.learner, {}),
                               f"learner_options.{method.learner}")
    uses_text = "text" in method.modalities or cls.requires_class_text
    channels = dataset.image_shape[0]
    split_names = {s: [dataset.class_names[c] for c in dataset.split_classes(s)] for s in ("train", "val")
                   if s in dataset.splits}
    return {
        "learner": method.learner, "learner_options": dataclasses.asdict(options) if options is not None else {},
        "modalities": list(method.modalities), "fusion": method.fusion,
        "fusion_options": dict(cfg.fusion_options.get(method.fusion or "", {})),
        "backbone": cfg.backbone, "backbone_options": dict(cfg.backbone_options),
        "text_encoder": cfg.text_encoder if uses_text else None,
        "text_encoder_options": dict(cfg.text_encoder_options) if uses_text else {},
        "text_corpus": text_corpus(dataset) if uses_text else None,
        "setting": {"support": list(setting.support), "query": list(setting.query)},
        "preprocessing": {
            "image_shape": list(dataset.image_shape), "channels": channels, "mode": "L" if channels == 1 else "RGB",
            "resample": dataset.info.get("resample", "lanczos"), "invert": bool(dataset.info.get("invert", False)),
            "mean": [float(m) for m in dataset.mean], "std": [float(s) for s in dataset.std],
        },
        "dataset": {
            "name": dataset.name, "options": dict(cfg.dataset_options), "fingerprint": dataset.fingerprint(),
            "split": "train", "train_class_ids": [int(c) for c in dataset.split_classes("train")],
            "train_classes": split_names["train"], "val_classes": split_names.get("val", []),
            "info": {k: v for k, v in dataset.info.items() if isinstance(v, (str, int, float, bool, list))},
        },
        "seed": cfg.seed, "git_commit": git_commit(), "config": to_dict(cfg),
    }


def build_from_meta(meta: dict[str, Any], source: str = "checkpoint") -> tuple[Learner, Any]:
    """An untrained learner with the architecture ``meta`` describes, and its text encoder (or ``None``)."""
    cls = LEARNERS.get(meta["learner"])
    encoder = None
    if "text" in meta["modalities"] or cls.requires_class_text:
        encoder = TEXT_ENCODERS.get(meta["text_encoder"])(meta["text_corpus"] or [], **meta["text_encoder_options"])
    setting = TaskSetting(tuple(meta["setting"]["support"]), tuple(meta["setting"]["query"]))
    train_ids = tuple(meta["dataset"]["train_class_ids"])
    spec = ModelSpec(
        modalities=tuple(meta["modalities"]), setting=setting, image_shape=tuple(meta["preprocessing"]["image_shape"]),
        backbone=meta["backbone"], backbone_options=dict(meta["backbone_options"]), text_encoder=encoder,
        fusion=meta["fusion"], fusion_options=dict(meta["fusion_options"]),
        n_train_classes=len(train_ids), train_class_ids=train_ids,
    )
    config = component_config(cls.Config, meta["learner_options"], f"{source}: learner_options")
    try:
        return cls(spec, config), encoder
    except TypeError as err:
        raise BenchmarkError(f"{source}: options of learner {meta['learner']!r}: {err}") from None


def config_of(config: str | Path | dict | ExperimentConfig, data_root: str | None = None,
              dataset: str | None = None) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a YAML path, a mapping or a config, with ``data_root``/``dataset`` set."""
    if isinstance(config, (str, Path)):
        cfg = merge(ExperimentConfig(), load_yaml(config), f"config file {config}")
    elif isinstance(config, dict):
        cfg = merge(ExperimentConfig(), config, "config")
    else:
        cfg = config
    overrides = {k: v for k, v in {"data_root": data_root, "dataset": dataset}.items() if v is not None}
    return merge(cfg, overrides, "load_learner") if overrides else cfg


def describe_from_config(cfg: ExperimentConfig, method: str | None = None) -> dict[str, Any]:
    """Metadata for a bare state dict trained with ``cfg``: loads the dataset for statistics and classes."""
    methods = [parse_method(method)] if method else expand_methods(cfg)
    if len(methods) != 1:
        raise BenchmarkError(f"the config names {len(methods)} methods ({', '.join(m.label for m in methods)}); "
                             "say which one the checkpoint holds with --method LEARNER:MODALITIES[:FUSION]")
    dataset = load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options)
    setting = TaskSetting(parse_modalities(cfg.eval.support_modalities, "eval.support_modalities"),
                          parse_modalities(cfg.eval.query_modalities, "eval.query_modalities"))
    if dataset.captions is None:
        setting = TaskSetting(("image",), ("image",))
    return describe(cfg, methods[0], dataset, setting)


def load_learner(path: str | Path, config: str | Path | dict | ExperimentConfig | None = None,
                 data_root: str | None = None, method: str | None = None, device: str = "cpu") -> Learner:
    """Rebuild a trained learner from a checkpoint, in eval mode, with ``learner.benchmark_info`` set.

    Args:
        path: a model file written by a run (self-describing) or an older bare state dict.
        config: for a bare state dict only: the experiment it was trained with (YAML path or config).
        data_root: for a bare state dict: where the config's dataset lies (statistics, training classes).
        method: for a bare state dict whose config names several methods, e.g. ``"protonet:image"``.

    Raises:
        BenchmarkError: unreadable file, a bare state dict without ``config``, or weights of another shape.
    """
    path = Path(path)
    state, meta = read_model(path)
    bare = meta is None
    if bare:
        if config is None:
            raise BenchmarkError(
                f"checkpoint {path} is a bare state dict (an older checkpoint): it does not record {LACKS}. "
                "Give the experiment it was trained with: --config FILE (Python: config=) and --data-root DIR "
                "(statistics and training classes are read from the data), plus --method if the config names "
                "several methods; or write a self-describing copy once with "
                f"`python run_benchmark.py upgrade-checkpoint {path} --config FILE --data-root DIR --out NEW.pt`")
        log.warning("checkpoint %s is a bare state dict: the learner, its options, preprocessing and training "
                    "classes are taken from the config and the dataset, not from the file", path)
        meta = describe_from_config(config_of(config, data_root), method)
    learner, encoder = build_from_meta(meta, f"checkpoint {path}")
    check_state_dict(learner, state, f"checkpoint {path}",
                     advice="Check the config or --method it is loaded with" if bare else
                     "The learner's code changed since it was saved")
    learner.load_state_dict(state)
    learner = learner.to(torch.device(device)).eval()
    learner.benchmark_info = LearnerInfo(path, meta, encoder, bare)
    return learner


#: ``dataset.info`` entries that hold paths (besides any absolute path): stored relative to the data root
PATH_KEYS = ("root", "captions", "csv")


def portable(meta: dict[str, Any], data_root: str | Path | None) -> dict[str, Any]:
    """``meta`` without absolute paths: the config's ``data_root`` left out (give ``--data-root`` when
    evaluating), an absolute ``out`` made relative to the working directory (or the default), and the
    dataset's paths made relative to ``data_root`` (or left out when they lie elsewhere)."""
    base = Path(data_root).expanduser().resolve() if data_root is not None else None

    def relative(value: str, to: Path | None) -> str | None:
        if to is None:
            return None
        try:
            return str(Path(value).expanduser().resolve().relative_to(to))
        except ValueError:
            return None

    meta = json.loads(json.dumps(meta))  # a deep copy
    config = meta.get("config")
    if isinstance(config, dict):
        config["data_root"] = None
        if isinstance(config.get("out"), str) and Path(config["out"]).is_absolute():
            config["out"] = relative(config["out"], Path.cwd().resolve()) or ExperimentConfig().out
    info = meta.get("dataset", {}).get("info", {})
    for key, value in list(info.items()):
        if isinstance(value, str) and (key in PATH_KEYS or Path(value).is_absolute()):
            info[key] = relative(value, base)
            if info[key] is None:
                del info[key]
    return meta


def same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> list[str]:
    """The entries where two state dicts differ (keys, dtype, shape or any value); empty when identical."""
    keys = sorted(set(first) | set(second))
    return [k for k in keys if k not in first or k not in second or first[k].dtype != second[k].dtype
            or first[k].shape != second[k].shape or not torch.equal(first[k], second[k])]


def upgrade_checkpoint(path: str | Path, out: str | Path, config: str | Path | ExperimentConfig,
                       data_root: str | None = None, method: str | None = None,
                       lineage: dict[str, Any] | None = None, at_commit: str | None = None) -> Path:
    """Write a self-describing copy of a bare state dict (same weights; metadata from ``config``).

    The metadata records where the weights came from, ``upgraded_from``: the bare file's ``sha256``,
    its ``path`` (the name only, unless ``lineage`` gives one), the ``commit`` holding it (``lineage``;
    ``None`` when unknown) and ``same_weights: true``, checked here: every tensor of the new file equals
    the original's; ``upgraded_at_commit`` is ``at_commit`` (default: the checked-out commit, ``-dirty``
    with uncommitted changes). The metadata embeds no absolute path (see :func:`portable`).

    Raises:
        BenchmarkError: ``out`` is ``path``, ``path`` is already self-describing, or the tensors differ.
    """
    import hashlib

    from benchmark.provenance import git_commit

    path, out = Path(path), Path(out)
    if out.resolve() == path.resolve():
        raise BenchmarkError(f"--out {out} is the checkpoint itself; write the upgraded copy to another file")
    original = path.read_bytes() if path.is_file() else b""
    learner = load_learner(path, config, data_root, method)
    info = learner.benchmark_info
    if not info.bare:
        raise BenchmarkError(f"{path} is already a self-describing model file; nothing to upgrade")
    root = data_root if data_root is not None else config_of(config).data_root
    source = {"sha256": hashlib.sha256(original).hexdigest(), "path": path.name, "commit": None,
              "same_weights": True, **(lineage or {})}
    meta = {**portable(info.meta, root), "git_commit": None, "upgraded_from": source,
            "upgraded_at_commit": at_commit or git_commit()}
    save_model(out, learner, meta)
    bare, _ = read_model(path)
    written, _ = read_model(out)
    differ = same_tensors(bare, written)
    if differ:
        out.unlink()
        raise BenchmarkError(f"the upgraded copy of {path} differs from it in {len(differ)} entries (e.g. "
                             f"{', '.join(differ[:3])}); nothing written")
    return out
