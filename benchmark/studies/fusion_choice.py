"""Choose classfusion's fusion for the end-to-end runs from the class-text study scored on validation classes."""
from __future__ import annotations

import json
from pathlib import Path

from benchmark.selection import Selection, choose
from benchmark.studies.miniimagenet_text import METHODS
from benchmark.studies.tables import study_rows
from tasks.errors import BenchmarkError

#: what the end-to-end config's classfusion fusion is chosen from: the class-text fusions the study trains
FUSION_CANDIDATES = {label: options["fusion"] for label, (learner, options) in METHODS.items()
                     if learner == "classfusion" and options.get("class_text", True) and label != "fusion_late"}


def select_fusion(out: Path) -> Selection:
    """Choose classfusion's fusion from a study scored on validation classes (``--eval-split val``).

    The score of each fusion is its mean accuracy with all class text, averaged over the study's shots.
    The choice is written to ``out/selection.json`` (:class:`benchmark.selection.Selection`).

    Raises:
        BenchmarkError: the study was scored on test classes, or has no fusion rows.
    """
    out = Path(out)
    try:
        split = json.loads((out / "study.json").read_text())["config"].get("eval_split", "test")
    except (OSError, ValueError, KeyError) as err:
        raise BenchmarkError(f"{out}/study.json: cannot read the study record ({err}); run the study first") from None
    rows = study_rows(out)
    rows = rows[rows["method"].isin(list(FUSION_CANDIDATES)) & (rows["text_fraction"] == 1.0)] if not rows.empty else rows
    if rows.empty:
        raise BenchmarkError(f"{out}: no rows of the fusions {sorted(FUSION_CANDIDATES)}; run them first")
    per_shot = rows.groupby(["method", "n_shot"])["value"].mean().unstack("n_shot")
    scores = {FUSION_CANDIDATES[m]: float(v) for m, v in per_shot.mean(axis=1).items()}
    evidence = {"study": out.as_posix(), "per_shot": {FUSION_CANDIDATES[m]: {f"5w{s}s": round(float(v), 6)
                for s, v in r.items()} for m, r in per_shot.iterrows()},
                "manifests_sha256": sorted(rows["manifest_sha256"].unique().tolist())}
    selection = choose("learner_options.classfusion.fusion", scores, split,
                       "mean accuracy with all class text, averaged over the study's shots", evidence)
    selection.write(out / "selection.json")
    return selection
