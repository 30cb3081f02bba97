#!/usr/bin/env python
"""Give the committed eval-only checks (``results/checks/*.json``, first format: a verdict only) the
per-episode accuracies they compared, without re-running them.

A first-format check that found its accuracies equal to the committed ones exactly compared exactly
the values of ``results/checkpoints/NAME.episodes.json`` as they were then. A check is upgraded only
when that is provable from git: the episode file at the commit that recorded the check is the one in
the tree now, every row says ``equals_committed_episodes`` over the manifest the file records, and
the row's mean and CI recompute from those values. Anything else is left as it is and reported.
``python scripts/upgrade_checks.py [--dry-run]``; exit code 1 when a check was left.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.reproduce_eval import dump_check  # noqa: E402
from benchmark.stats import mean_ci95  # noqa: E402


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout


def upgrade(path: Path) -> tuple[dict | None, str]:
    """The check in the second format, or ``None`` and why it cannot be upgraded honestly."""
    check = json.loads(path.read_text())
    if check.get("format", 1) != 1:
        return None, "already holds its per-episode values"
    episodes = Path("results") / "checkpoints" / f"{path.stem}.episodes.json"
    recorded_at = git("log", "-1", "--format=%H", "--", str(path.relative_to(ROOT))).decode().strip()
    then = git("show", f"{recorded_at}:{episodes.as_posix()}")
    now = (ROOT / episodes).read_bytes()
    if then != now:
        return None, f"{episodes} changed since the check was recorded ({recorded_at[:10]})"
    data = json.loads(now)
    evals = data["evals"] if "evals" in data else {"only": data}
    if len(evals) != len(check["rows"]):
        return None, f"{len(check['rows'])} rows, {len(evals)} evaluations in {episodes}"
    for name, row in check["rows"].items():
        ref = evals[name.rpartition("/")[2]] if "/" in name else next(iter(evals.values()))
        values = ref["accuracy"][: row["episodes"]]
        mean, ci = (round(100 * v, 2) for v in mean_ci95(np.asarray(values, dtype=np.float64)))
        if not row["equals_committed_episodes"] or row["manifest_sha256"] != ref["manifest_sha256"]:
            return None, f"row {name} did not find the committed values: what it computed is not recorded"
        if (mean, ci) != (row["mean"], row["ci95"]) or len(values) != row["episodes"]:
            return None, f"row {name}: its mean and CI do not recompute from {episodes}"
        row["accuracy"] = values
    upgraded = {"format": 2, **check, "compared_with": {"path": f"checkpoints/{episodes.name}",
                                                        "sha256": hashlib.sha256(now).hexdigest()}}
    upgraded["upgraded"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "by": "scripts/upgrade_checks.py (not re-run)",
        "note": f"per-episode accuracies taken from {episodes} as committed at {recorded_at[:10]}, the commit "
                "that recorded this check, and unchanged since; the check found its own values equal to these "
                "exactly, so they are the values it compared"}
    return upgraded, "upgraded"


def main(argv: list[str]) -> int:
    left = 0
    for path in sorted((ROOT / "results" / "checks").glob("*.json")):
        record, why = upgrade(path)
        print(f"{path.relative_to(ROOT)}: {why}")
        if record is None:
            left += why != "already holds its per-episode values"
        elif "--dry-run" not in argv:
            path.write_text(dump_check(record))
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
