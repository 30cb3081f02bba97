"""Choices are made on validation classes, never on test classes.

A *choice* is any value picked by comparing candidates: a fusion, a temperature, a backbone, the
checkpoint (training step) kept. :func:`choose` is the one place that picks: it takes the scores and
the split they were measured on, refuses a test split, and returns a :class:`Selection` that is
written beside the evidence (``selection.json``). A config whose value came from such a choice
records it in ``choices:`` (key, value, split, evidence); :func:`check_choices` verifies every entry
when the config is loaded, so a value picked on test classes, or one that no longer matches its
evidence, is an error::

    choices:
      - key: learner_options.matchingnet.temperature
        value: 10
        split: val
        evidence: results/choices/matchingnet_temperature.json
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmark.provenance import REPO
from tasks.errors import BenchmarkError

#: episode splits whose classes are held out for the final numbers: no choice may read them
TEST_SPLITS = frozenset({"test"})
CHOICE_KEYS = ("key", "value", "split", "evidence")


def require_selection_split(split: str, what: str) -> None:
    """Raise unless ``split`` may be read to choose ``what`` (any split but a test split)."""
    if split in TEST_SPLITS:
        raise BenchmarkError(f"{what} would be chosen on the {split!r} split; choices (fusion, temperature, "
                             "backbone, checkpoint, epoch) are made on validation classes only: score the "
                             "candidates on 'val' episodes")


@dataclass(frozen=True)
class Selection:
    """What was chosen, from which candidates, on which split, by which criterion.

    ``scores`` maps each candidate (as text) to its score; higher is better. ``evidence`` says where
    each score came from (run folders, manifests' sha256).
    """

    what: str
    split: str
    criterion: str
    scores: dict[str, float]
    choice: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def write(self, path: str | Path) -> Path:
        from benchmark.results import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Selection":
        try:
            data = json.loads(Path(path).read_text())
            return cls(**{k: data[k] for k in ("what", "split", "criterion", "scores", "choice")},
                       evidence=data.get("evidence", {}))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise BenchmarkError(f"{path} is not a selection record ({err}); it is written by `select` or a "
                                 "study's selection step") from None


def choose(what: str, scores: Mapping[Any, float], split: str, criterion: str,
           evidence: Mapping[str, Any] | None = None) -> Selection:
    """The candidate with the highest score (the first of equal ones), measured on ``split``.

    Raises:
        BenchmarkError: ``split`` is a test split, there are no candidates, or a score is not finite.
    """
    require_selection_split(split, what)
    if not scores:
        raise BenchmarkError(f"nothing to choose {what} from: no candidate was scored")
    bad = {str(k): v for k, v in scores.items() if not math.isfinite(float(v))}
    if bad:
        raise BenchmarkError(f"choosing {what}: candidate(s) without a finite score {bad}")
    ordered = {str(k): float(v) for k, v in scores.items()}
    best = max(ordered, key=lambda k: ordered[k])  # max keeps the first of equal scores
    return Selection(what, split, criterion, ordered, best, dict(evidence or {}))


def value_at(config: Any, key: str) -> Any:
    """The value at dotted ``key`` of a config dataclass or mapping (``learner_options.maml.head``)."""
    node = config
    for part in key.split("."):
        if isinstance(node, Mapping):
            if part not in node:
                raise KeyError(key)
            node = node[part]
        elif hasattr(node, part):
            node = getattr(node, part)
        else:
            raise KeyError(key)
    return node


def _same(a: Any, b: Any) -> bool:
    return a == b or str(a) == str(b)


def check_choices(config: Any, choices: list[Mapping[str, Any]], where: str, root: Path = REPO) -> None:
    """Verify each ``choices:`` entry of ``config``: not made on a test split, the config holds the chosen
    value, and the evidence file (relative to the checkout) records the same choice on the same split.

    Raises:
        BenchmarkError: naming the entry and what to do.
    """
    for i, choice in enumerate(choices):
        name = f"{where}: choices[{i}]"
        if not isinstance(choice, Mapping) or set(choice) != set(CHOICE_KEYS):
            raise BenchmarkError(f"{name} must have exactly the keys {list(CHOICE_KEYS)}, got "
                                 f"{sorted(choice) if isinstance(choice, Mapping) else choice!r}")
        key, value, split = choice["key"], choice["value"], str(choice["split"])
        require_selection_split(split, f"{name} ({key})")
        try:
            configured = value_at(config, key)
        except KeyError:
            raise BenchmarkError(f"{name}: the config has no value at {key!r}; name the key the choice set") from None
        if not _same(configured, value):
            raise BenchmarkError(f"{name}: {key} is {configured!r} in the config but the choice recorded {value!r}; "
                                 "make them agree (or redo the choice)")
        evidence = root / str(choice["evidence"])
        if not evidence.is_file():
            raise BenchmarkError(f"{name}: evidence {choice['evidence']} does not exist (relative to {root}); commit "
                                 "the selection record the choice was made from")
        record = Selection.read(evidence)
        require_selection_split(record.split, f"{name} ({key}, evidence {choice['evidence']})")
        if record.split != split or not _same(record.choice, value):
            raise BenchmarkError(f"{name}: {choice['evidence']} chose {record.choice!r} on {record.split!r}, "
                                 f"the config records {value!r} on {split!r}; make them agree")
