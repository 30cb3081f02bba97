"""What a run wrote to ``rows.jsonl``, and whether the file still holds it.

``run.json`` records under ``"rows"``, per method slug, what the run wrote for it: the number of rows,
their number per evaluation (``"5w1s"``) and the sha256 of the rows (each as ``json.dumps(row,
sort_keys=True)`` and a newline, in file order; the same for ``rows.jsonl.gz``). The runner writes a
method's record before its rows, each file atomically, so a kill between the two leaves a record
whose rows are missing: detected like any other loss and recomputed by the next run.

:func:`check_rows` compares the rows file with that record: a line cut off or not JSON, a method with
missing or extra rows, or rows that differ from those written make the run *damaged*. Folders
written before runs kept a record (and methods it does not name) are *unknown*: their rows are read
as they are, without alarm; only unreadable lines are reported.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.results import atomic_write_bytes, parse_jsonl, rows_file

RECORD = "rows"  # the key of run.json


def method_slug(row: dict) -> str:
    """The slug of the method of a row (``learner-modalities-fusion``, as :attr:`Method.slug`)."""
    return f"{row.get('learner')}-{row.get('modalities')}-{row.get('fusion') or 'none'}"


def _text(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()


def describe_rows(rows: list[dict]) -> dict:
    """The record of one method's rows: ``{"rows": n, "evals": {"5w1s": n, ...}, "sha256": ...}``."""
    evals = Counter(f"{r.get('n_way')}w{r.get('n_shot')}s" for r in rows)
    return {"rows": len(rows), "evals": dict(sorted(evals.items())), "sha256": hashlib.sha256(_text(rows)).hexdigest()}


def recorded_rows(run_dir: Path) -> dict[str, dict] | None:
    """The ``"rows"`` record of ``run_dir/run.json``; ``None`` when it has none (or cannot be read)."""
    try:
        record = json.loads((Path(run_dir) / "run.json").read_text()).get(RECORD)
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def _difference(expected: dict, found: dict | None) -> str | None:
    """What is wrong with one method's rows (``None`` when they are those written)."""
    want = expected.get("evals", {})
    if found is None:
        counts = ", ".join(f"{k} {n}" for k, n in want.items())
        return f"no rows (written: {expected.get('rows')} rows, {counts})"
    have = found["evals"]
    wrong = [f"{k} has {have.get(k, 0)} of {want.get(k, 0)} rows" for k in sorted(set(want) | set(have))
             if have.get(k, 0) != want.get(k, 0)]
    if wrong:
        return ", ".join(wrong)
    if expected.get("sha256") and expected["sha256"] != found["sha256"]:
        return "its rows differ from those written (sha256)"
    return None


@dataclass
class RowsCheck:
    """The result of :func:`check_rows`."""

    path: Path  # the rows file checked
    records: list[dict]  # its readable rows
    known: bool  # run.json records what was written
    bad_lines: list[int] = field(default_factory=list)  # lines (from 1) cut off or not JSON
    present: set[str] = field(default_factory=set)  # slugs of the methods with rows in the file
    damaged: dict[str, str] = field(default_factory=dict)  # slug -> what is missing or wrong

    @property
    def ok(self) -> bool:
        return not self.bad_lines and not self.damaged

    @property
    def finished(self) -> set[str]:
        """Methods whose rows are complete (or unknown): a rerun skips them."""
        return self.present - set(self.damaged)

    def describe(self) -> str:
        """One sentence naming the file and everything missing or wrong ('' when the file is whole)."""
        problems = []
        if self.bad_lines:
            shown = ", ".join(map(str, self.bad_lines[:5])) + (", ..." if len(self.bad_lines) > 5 else "")
            many = len(self.bad_lines) > 1
            problems.append(f"line{'s' * many} {shown} {'are' if many else 'is'} cut off or not JSON")
        problems += [f"{slug}: {what}" for slug, what in sorted(self.damaged.items())]
        return f"{self.path} is damaged or incomplete: {'; '.join(problems)}" if problems else ""


def check_rows(run_dir: Path, path: Path | None = None) -> RowsCheck:
    """Compare the rows file of ``run_dir`` (``path``, default :func:`rows_file`) with ``run.json``'s record.

    Raises:
        BenchmarkError: the file cannot be read or decompressed.
    """
    path = Path(path) if path else rows_file(run_dir)
    records, bad = parse_jsonl(path)
    written = recorded_rows(run_dir)
    check = RowsCheck(path, records, written is not None, bad, {method_slug(r) for r in records})
    if written:
        by_method: dict[str, list[dict]] = {}
        for row in records:
            by_method.setdefault(method_slug(row), []).append(row)
        for slug, expected in written.items():
            found = describe_rows(by_method[slug]) if slug in by_method else None
            what = _difference(expected, found)
            if what:
                check.damaged[slug] = what
    return check


def replace_rows(path: Path, slug: str, rows: list[dict]) -> None:
    """Write the rows of method ``slug`` into the JSONL file ``path``, atomically, in place of any it holds.

    Lines of other methods are kept byte for byte; lines cut off or not JSON are dropped (the runner
    sets a damaged file aside first, see :func:`set_aside_damaged`). Concurrent writers are excluded by
    the run-folder lock (:class:`benchmark.checkpoint.RunLock`).
    """
    path = Path(path)
    kept = []
    for line in path.read_bytes().splitlines(keepends=True) if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and method_slug(row) != slug:
            kept.append(line if line.endswith(b"\n") else line + b"\n")
    atomic_write_bytes(path, b"".join(kept) + _text(rows))


def set_aside_damaged(path: Path) -> Path | None:
    """Copy a damaged rows file to ``rows.damaged-<time>.jsonl`` beside it before it is repaired."""
    path = Path(path)
    if not path.exists():
        return None
    copy = path.with_name(time.strftime(f"rows.damaged-%Y%m%d-%H%M%S{''.join(path.suffixes)}"))
    atomic_write_bytes(copy, path.read_bytes())
    return copy
