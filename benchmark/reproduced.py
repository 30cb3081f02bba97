"""The committed reproduction table: ``results/reproduced.csv``, its README, and the clean-tree rule.

``reproduced.csv`` holds one row per published number reproduced (see :mod:`benchmark.reproduce`);
``results/README.md`` is generated from it (:func:`readme_text`) and never edited by hand. A row is
only written from a git tree without uncommitted changes outside the files ``reproduce`` itself writes
(:func:`dirty_paths`), so that its ``git_commit`` names the code that produced it.
"""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pandas as pd

from benchmark.results import atomic_write_text, to_markdown
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "results"
#: what ``reproduce`` writes itself: changes there do not make the tree dirty
OUTPUT_PATHS = ("results/training/", "results/checkpoints/", "results/checks/", "results/reproduced.csv",
                "results/README.md")
GOAL_POINTS = 0.5  # the reproduction goal: within half a point of the published mean (or it inside our CI)

REPRODUCED_COLUMNS = [
    "name", "protocol", "benchmark", "reference", "label", "comparable", "protocol_deviations", "learner",
    "n_way", "n_shot", "n_query", "published_mean", "published_ci95", "mean", "ci95", "difference",
    "published_in_ci", "within_half_point", "test_episodes", "training", "hardware", "train_wall_time_s",
    "manifest_sha256", "dataset_fingerprint", "checkpoint_sha256", "git_commit", "date", "command",
]


def dirty_paths(root: Path = REPO) -> list[str]:
    """Uncommitted changes (tracked or untracked, not ignored) outside :data:`OUTPUT_PATHS`.

    Raises:
        BenchmarkError: ``root`` is not a git checkout (a row needs a commit to point at).
    """
    try:
        result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "-z"], cwd=root,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        raise BenchmarkError(f"cannot run git in {root} ({err}): a reproduction row needs a git checkout") from None
    if result.returncode != 0:
        raise BenchmarkError(f"{root} is not a git checkout ({result.stderr.strip()}): a reproduction row "
                             "needs a commit to point at; clone the repository")
    paths, entries = [], iter(result.stdout.split("\0"))
    for entry in entries:
        if not entry:
            continue
        status, path = entry[:2], entry[3:]
        if "R" in status or "C" in status:
            next(entries, None)  # -z: the rename's source follows as its own entry
        if not path.startswith(OUTPUT_PATHS):
            paths.append(path)
    return paths


def head_commit(root: Path = REPO) -> str:
    """The checked-out commit (``unknown`` outside git)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def read_reproduced(results_dir: Path = RESULTS_DIR) -> pd.DataFrame:
    """``reproduced.csv`` in the current columns (older files are migrated in memory, see :func:`migrate`)."""
    path = results_dir / "reproduced.csv"
    if not path.exists():
        return pd.DataFrame(columns=REPRODUCED_COLUMNS)
    try:
        table = pd.read_csv(path, dtype={"name": str, "protocol_deviations": str, "label": str}, keep_default_na=False,
                            na_values=[""])
    except (OSError, ValueError) as err:
        raise BenchmarkError(f"cannot read {path}: {err}; restore it with git checkout -- {path}") from None
    return migrate(table) if "protocol_deviations" not in table.columns else table.reindex(columns=REPRODUCED_COLUMNS)


def migrate(table: pd.DataFrame) -> pd.DataFrame:
    """One-off migration of the first ``reproduced.csv`` (before ``protocol_deviations``).

    Rows trained from a dirty tree (``git_commit`` ending in ``-dirty``) are dropped: their commit does
    not name the code that produced them. The others take their deviations from their protocol's
    current config, and its label (a config without a ``protocol:`` section keeps none), ``comparable``
    becomes "no deviation", and ``within_half_point`` is computed from ``difference``.
    """
    from benchmark.reproduce import CONFIG_DIR, load_protocol, protocol_names

    dirty = table["git_commit"].astype(str).str.endswith("-dirty")
    for name in table.loc[dirty, "name"]:
        log.warning("reproduced.csv: row %s was trained from a dirty tree and is dropped", name)
    table = table[~dirty].copy()
    known = set(protocol_names(CONFIG_DIR))
    protocols = {n: load_protocol(n) for n in table["name"] if n in known}
    deviations = {n: protocols[n].deviations if n in protocols else () for n in table["name"]}
    table["protocol"] = table["name"]
    table["label"] = [protocols[n].label if n in protocols else old for n, old in zip(table["name"], table["label"])]
    table["protocol_deviations"] = ["; ".join(deviations[n]) for n in table["name"]]
    table["comparable"] = [not deviations[n] for n in table["name"]]
    table["within_half_point"] = [bool(abs(d) <= GOAL_POINTS) for d in table["difference"]]
    return table.reindex(columns=REPRODUCED_COLUMNS)


def upsert(rows: list[dict], results_dir: Path = RESULTS_DIR) -> pd.DataFrame:
    """Replace the rows of the same names, write ``reproduced.csv`` and regenerate ``README.md``."""
    table = read_reproduced(results_dir)
    names = {r["name"] for r in rows}
    table = pd.concat([table[~table["name"].isin(names)], pd.DataFrame(rows)], ignore_index=True)
    table = table.reindex(columns=REPRODUCED_COLUMNS).sort_values("name", ignore_index=True)
    save(table, results_dir)
    return table


def save(table: pd.DataFrame, results_dir: Path = RESULTS_DIR) -> None:
    """Write ``reproduced.csv`` (the columns of :data:`REPRODUCED_COLUMNS`) and its ``README.md``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_dir / "reproduced.csv", table.reindex(columns=REPRODUCED_COLUMNS).to_csv(index=False))
    atomic_write_text(results_dir / "README.md", readme_text(read_reproduced(results_dir)))


def _true(value) -> bool:
    return str(value) == "True"


def goal(row) -> str:
    """Whether a row meets the reproduction goal: within 0.5 points, or the published mean inside our CI
    (``yes``/``no``; ``, protocol deviates`` is added for a row that is not comparable)."""
    met = "yes" if _true(row.within_half_point) or _true(row.published_in_ci) else "no"
    return met if _true(row.comparable) else f"{met}, protocol deviates"


def readme_text(table: pd.DataFrame) -> str:
    """``results/README.md`` from the rows of ``reproduced.csv`` (a pure function of the table)."""
    shown = pd.DataFrame({
        "benchmark": table["benchmark"],
        "row": [f"{r.name}: {r.learner} {r.n_way}w{r.n_shot}s" for r in table.itertuples()],
        "published": [f"{m:.2f}" + (f" ± {c:.2f}" if not pd.isna(c) else "")
                      for m, c in zip(table["published_mean"], table["published_ci95"])],
        "ours (95% CI)": [f"{m:.2f} ± {c:.2f}" for m, c in zip(table["mean"], table["ci95"])],
        "difference": [f"{d:+.2f}" for d in table["difference"]],
        "meets 0.5-point goal": [goal(r) for r in table.itertuples()],
        "comparable": ["yes" if _true(c) else "no (see below)" for c in table["comparable"]],
        "hardware": table["hardware"], "training": table["training"],
        "train wall time (s)": [f"{t:.0f}" for t in table["train_wall_time_s"]],
        "commit": [str(c)[:10] for c in table["git_commit"]],
        "rerun": [f"`{c}`" for c in table["command"]],
    })
    deviations = [f"- `{r.name}`: {r.protocol_deviations}" for r in table.itertuples()
                  if isinstance(r.protocol_deviations, str) and r.protocol_deviations]
    return (
        "# Reproduced results\n\n"
        "Generated by `benchmark/reproduced.py` from `reproduced.csv`: do not edit by hand.\n"
        "Each row was trained from a clean checkout of the commit in its row with the command in its last column;\n"
        "the committed checkpoint `checkpoints/<protocol>.pt` is re-evaluated on the same fixed test manifest\n"
        "(sha256 in `reproduced.csv`) by `python run_benchmark.py reproduce <protocol> --data-root DIR --eval-only`,\n"
        "which writes `checks/<protocol>.json` and never changes a row.\n"
        "Accuracies are percentages over the manifest's test episodes; the interval is the 95% t-interval over\n"
        "episodes. `leaderboard.csv` holds the published numbers with their protocols and sources.\n"
        f"The goal: within {GOAL_POINTS} points of the published mean, or the published mean inside our 95% CI.\n"
        "A row whose protocol deviates from the paper's in any way (a shorter training included) is not\n"
        "comparable: its deviations are listed below the table. See `docs/reproducing.md`.\n\n"
        + (to_markdown(shown) if not shown.empty else "(nothing reproduced yet)\n")
        + ("\n## Protocol deviations\n\n" + "\n".join(deviations) + "\n" if deviations else "")
    )
