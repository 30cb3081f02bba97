"""Committed checkpoints that describe themselves, and their lineage (``reproduce NAME --upgrade-checkpoint``).

The first committed models (``results/checkpoints/NAME.pt``) are bare state dicts: evaluating one
needs the config it was trained with. :func:`upgrade_committed` rewrites such a file in place as a
self-describing model file with the same tensors (checked): its metadata comes from the protocol's
config resolved as ``reproduce`` ran it and from the data under ``--data-root`` (no absolute path is
stored), and records ``upgraded_from``: the bare file's sha256, the commit that holds it and its
path there. The rows of ``reproduced.csv`` keep ``checkpoint_sha256``, the file they were evaluated
from, and get ``upgraded_checkpoint_sha256``, the file committed now.

:func:`verify_checkpoint` checks that chain (``--eval-only`` runs it before evaluating): the committed
file is the one its rows were evaluated from, or the recorded upgrade of it, whose tensors equal
those of the original (read back from git when the commit is there).
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmark import provenance, reproduced
from benchmark.checkpoint import read_model
from benchmark.reproduce import Protocol, _with_runtime, checkpoint_path
from benchmark.reproduced import RESULTS_DIR
from benchmark.results import atomic_write_bytes
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _git(cwd: Path, *args: str) -> bytes | None:
    """``git args`` in ``cwd``: its stdout, or ``None`` (no git, not a checkout, unknown object)."""
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def committed_original(path: Path) -> tuple[str | None, str | None]:
    """The commit that holds ``path`` exactly as it is now, and its path in that repository.

    Returns ``(None, None)`` outside git or when the file is not committed with these bytes.
    """
    path = Path(path).resolve()
    top = _git(path.parent, "rev-parse", "--show-toplevel")
    if top is None:
        return None, None
    top_dir = Path(top.decode().strip())
    try:
        rel = path.relative_to(top_dir.resolve()).as_posix()
    except ValueError:
        return None, None
    commit = (_git(top_dir, "log", "-1", "--format=%H", "--", rel) or b"").decode().strip()
    blob = _git(top_dir, "show", f"{commit}:{rel}") if commit else None
    if blob is None or hashlib.sha256(blob).hexdigest() != sha256_of(path):
        return None, None
    return commit, rel


def original_bytes(path: Path, source: dict[str, Any]) -> bytes | None:
    """The bare file an upgraded ``path`` came from, read from git (``None`` when not available)."""
    if not source.get("commit") or not source.get("path"):
        return None
    top = _git(Path(path).resolve().parent, "rev-parse", "--show-toplevel")
    return None if top is None else _git(Path(top.decode().strip()), "show", f"{source['commit']}:{source['path']}")


def _rows(protocol: Protocol, results_dir: Path) -> tuple[pd.DataFrame, pd.Series]:
    table = reproduced.read_reproduced(results_dir)
    return table, table["protocol"] == protocol.name


def _runtime_options(commands: list[str]) -> tuple[int, str]:
    """``--threads`` and ``--device`` of the rows' rerun command (the run's resolved config)."""
    threads = {int(m) for c in commands for m in re.findall(r"--threads (\d+)", str(c))}
    devices = {m for c in commands for m in re.findall(r"--device (\S+)", str(c))}
    return (threads.pop() if len(threads) == 1 else 0), (devices.pop() if len(devices) == 1 else "cpu")


def upgrade_committed(protocol: Protocol, data_root: str | None, results_dir: Path = RESULTS_DIR) -> Path | None:
    """Rewrite ``results/checkpoints/NAME.pt`` as a self-describing model file (same tensors).

    The rows of the protocol must have been evaluated from this very file (their
    ``checkpoint_sha256``) on the data under ``data_root`` (their ``dataset_fingerprint``); they get
    ``upgraded_checkpoint_sha256``, and the tree must be clean as for any change of a row.

    Returns:
        the path, or ``None`` when the file already describes itself (nothing to do).

    Raises:
        BenchmarkError: no committed file, rows evaluated from another file or on other data, a dirty tree.
    """
    from benchmark.savedmodel import upgrade_checkpoint

    path = checkpoint_path(protocol, results_dir)
    if not path.exists():
        raise BenchmarkError(f"no committed checkpoint {path} to upgrade")
    if read_model(path)[1] is not None:
        return None
    sha = sha256_of(path)
    table, mine = _rows(protocol, results_dir)
    rows = table[mine]
    other = [r.name for r in rows.itertuples() if r.checkpoint_sha256 != sha]
    if other:
        raise BenchmarkError(f"{path} (sha256 {sha[:12]}) is not the file row(s) {', '.join(other)} were evaluated "
                             "from (their checkpoint_sha256): restore that file before upgrading it")
    dirty = provenance.dirty_paths()  # outside what reproduce writes (an earlier upgrade's files included)
    at_commit = provenance.head_commit() + ("-dirty" if dirty else "")
    if len(rows):
        if dirty:
            raise BenchmarkError(f"upgrading {path} changes rows of reproduced.csv, which only happens from a clean "
                                 f"tree: commit or stash the changes in {', '.join(dirty[:8])}")
    threads, device = _runtime_options(rows["command"].tolist())
    cfg = _with_runtime(protocol, data_root, "results/training", threads, device)  # as `reproduce NAME` ran it
    commit, rel = committed_original(path)
    tmp = path.with_name(f".{path.stem}.upgrading.pt")
    try:
        upgrade_checkpoint(path, tmp, cfg, lineage={"commit": commit, "path": rel or path.name},
                           at_commit=at_commit)
        fingerprint = read_model(tmp)[1]["dataset"]["fingerprint"]
        wrong = [r.name for r in rows.itertuples() if r.dataset_fingerprint != fingerprint]
        if wrong:
            raise BenchmarkError(f"the dataset under {data_root} (fingerprint {fingerprint[:12]}) is not the one "
                                 f"row(s) {', '.join(wrong)} were trained on (their dataset_fingerprint)")
        atomic_write_bytes(path, tmp.read_bytes())  # checked: now it replaces the committed file
    finally:
        tmp.unlink(missing_ok=True)
    if len(rows):
        table.loc[mine, "upgraded_checkpoint_sha256"] = sha256_of(path)
        reproduced.save(table, results_dir)
    log.info("upgraded %s (was sha256 %s%s) to a self-describing model file, sha256 %s", path, sha[:12],
             f", committed in {commit[:10]}" if commit else "", sha256_of(path)[:12])
    return path


def verify_checkpoint(protocol: Protocol, results_dir: Path = RESULTS_DIR, check_weights: bool = True) -> dict:
    """Check that the committed checkpoint is what its rows were evaluated from, or its recorded upgrade.

    A row's ``checkpoint_sha256`` must be the file's sha256; or, when the row has an
    ``upgraded_checkpoint_sha256``, that must be the file's and the file's ``upgraded_from.sha256``
    the row's ``checkpoint_sha256``. With ``check_weights``, the original of an upgraded file is read
    back from git (when its commit is there) and every tensor compared.

    Returns:
        ``{"checkpoint", "sha256", "rows", "upgraded_from", "weights_checked"}``.

    Raises:
        BenchmarkError: a broken link of the chain, or tensors that differ from the original's.
    """
    from benchmark.savedmodel import same_tensors

    path = checkpoint_path(protocol, results_dir)
    sha = sha256_of(path)
    state, meta = read_model(path)
    source = (meta or {}).get("upgraded_from")
    source = source if isinstance(source, dict) else None
    table, mine = _rows(protocol, results_dir)
    for row in table[mine].itertuples():
        upgraded = row.upgraded_checkpoint_sha256 if isinstance(row.upgraded_checkpoint_sha256, str) else None
        if upgraded is None and sha == row.checkpoint_sha256:
            continue
        if upgraded is not None and sha == upgraded and source and source.get("sha256") == row.checkpoint_sha256:
            continue
        raise BenchmarkError(
            f"{path} (sha256 {sha[:12]}{', upgraded from ' + str(source.get('sha256'))[:12] if source else ''}) is "
            f"neither the file row {row.name} was evaluated from (checkpoint_sha256 {str(row.checkpoint_sha256)[:12]}) "
            f"nor its recorded self-describing copy (upgraded_checkpoint_sha256 {str(upgraded)[:12]})")
    checked = False
    if source and check_weights:
        data = original_bytes(path, source)
        if data is not None:
            if hashlib.sha256(data).hexdigest() != source.get("sha256"):
                raise BenchmarkError(f"{path}: the file at {source['commit'][:10]}:{source['path']} is not the one it "
                                     f"records being upgraded from (sha256 {str(source.get('sha256'))[:12]})")
            original = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            original = original.get("state_dict", original) if isinstance(original, dict) else original
            differ = same_tensors(original, state)
            if differ:
                raise BenchmarkError(f"{path}: {len(differ)} tensors differ from the file it was upgraded from "
                                     f"({source['commit'][:10]}:{source['path']}), e.g. {', '.join(differ[:3])}")
            checked = True
    return {"checkpoint": str(path), "sha256": sha, "rows": int(mine.sum()), "upgraded_from": source,
            "weights_checked": checked}
