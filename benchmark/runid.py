"""What a run id covers besides the config: the plugins' code and the learners' option defaults.

Two things decide a run's numbers without being in its config: the code of the modules loaded with
``--plugin``, and the default values of learner options the config leaves unset. Both enter the run
id (:func:`benchmark.runner.config_hash`) only where they differ from the state in which run ids were
first made, no plugins and the built-in defaults of :data:`BASELINE_DEFAULTS`: every existing run
keeps its id, and editing a plugin or changing a default gives a new id, so stale rows are never reused.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from benchmark.plugins import fingerprint as plugin_fingerprint
from tasks.errors import BenchmarkError

# The built-in learners' option defaults when run ids began to cover them (issue 18). Frozen: never
# update it to match the code, or changed defaults would get the ids of runs made with the old ones.
_MAML = {"train_steps": 1, "train_step_size": 0.4, "test_steps": 3, "test_step_size": 0.4, "first_order": False,
         "batch_norm": "transductive", "head": "zero", "n_way": 5, "checkpoint": False, "task_batching": True,
         "query_chunk": 4, "query_channels_last": False}
_FINETUNE = {"scale": 10.0, "finetune_steps": 100, "finetune_lr": 0.01, "head_seed": 0}
BASELINE_DEFAULTS: dict[str, dict] = {
    "am3": {"distance": "euclidean", "temperature": 10.0, "hidden": 300, "gate_bias": 0.0, "force_gate": None},
    "anil": _MAML,
    "baselinepp": {**_FINETUNE, "optimizer": "sgd", "weight_decay": 0.001, "head_init": "prototype"},
    "fomaml": {**_MAML, "first_order": True},
    "linear_probe": {**_FINETUNE, "optimizer": "adam", "weight_decay": 0.0005, "head_init": "zeros"},
    "maml": _MAML,
    "matchingnet": {"temperature": 1.0},
    "protonet": {"distance": "euclidean", "temperature": 10.0},
}
# Options added after BASELINE_DEFAULTS, with defaults that compute exactly what the learner computed
# before they existed: at these values they leave run ids unchanged (another value is a changed default).
NEUTRAL_ADDITIONS: dict[str, dict] = {
    "am3": {"gate_reg": 0.0, "gate_target": 0.5, "text_dropout": 0.0},  # issue 16: off by default
    "classfusion": {"class_text": True},  # issue 16: the image-only control is opt-in
    **{name: {"batch_norm_scale": True, "adapt_batch_norm": True, "inner_loss": "mean"}  # cbfinn/maml's are opt-in
       for name in ("maml", "fomaml", "anil")},
}


def _defaults(cls: type) -> dict[str, Any] | None:
    config = getattr(cls, "Config", None)
    if config is None or not dataclasses.is_dataclass(config):
        return None
    return json.loads(json.dumps(dataclasses.asdict(config()), default=str))


def code_identity(learners: list[str]) -> dict[str, Any]:
    """``{"plugins": {...}, "learner_defaults": {learner: {option: default}}}``, each key only when
    non-empty: the plugin sources' sha256 and the defaults of ``learners`` that differ from the baseline."""
    from learners import LEARNERS

    out: dict[str, Any] = {}
    plugins = plugin_fingerprint()
    if plugins:
        out["plugins"] = plugins
    changed = {}
    for name in sorted(set(learners)):
        try:
            defaults = _defaults(LEARNERS.get(name))
        except BenchmarkError:  # an unknown learner is reported elsewhere, with suggestions
            continue
        if defaults is None:
            continue
        base = {**NEUTRAL_ADDITIONS.get(name, {}), **BASELINE_DEFAULTS.get(name, {})}
        diff = {k: v for k, v in defaults.items() if k not in base or base[k] != v}
        diff.update({k: "<removed>" for k in base if k not in defaults})
        if diff:
            changed[name] = diff
    if changed:
        out["learner_defaults"] = changed
    return out
