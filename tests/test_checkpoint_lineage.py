"""Committed checkpoints describe themselves: upgrading a bare one keeps its tensors and the sha256 its rows
were evaluated from (benchmark/reproduce_upgrade.py); the committed files and reproduced.csv agree."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmark import reproduce, reproduce_eval, reproduce_upgrade, reproduced
from benchmark.checkpoint import check_state_dict, read_model
from benchmark.cli import main
from benchmark.savedmodel import build_from_meta, same_tensors
from tasks.errors import BenchmarkError
from test_reproduce_runs import _protocol, clean  # noqa: F401  (clean: a fixture)

REPO = Path(__file__).resolve().parents[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _absolute_paths(value) -> list[str]:
    """The strings inside ``value`` (nested dicts and lists) that are absolute paths."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _absolute_paths(v)]
    return [value] if isinstance(value, str) and Path(value).is_absolute() else []


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def _older_row(tmp_path: Path, git: bool = False):
    """A tiny protocol trained and recorded, then its model turned into a bare state dict, as the first
    committed checkpoints were (its rows' checkpoint_sha256 naming that bare file); with ``git``, the
    results folder is a committed git checkout."""
    protocol, results = _protocol(tmp_path), tmp_path / "results"
    reproduce_train_protocol(protocol, results)
    path = reproduce.checkpoint_path(protocol, results)
    torch.save(read_model(path)[0], path)
    table = reproduced.read_reproduced(results)
    table["checkpoint_sha256"] = _sha(path)
    reproduced.save(table, results)
    if git:
        _git(results, "init", "-q")
        _git(results, "add", ".")
        _git(results, "commit", "-q", "-m", "rows")
    return protocol, results, path


def reproduce_train_protocol(protocol, results):
    from benchmark import reproduce_train

    reproduce_train.train_protocol(protocol, None, threads=1, results_dir=results)


def test_upgraded_committed_checkpoint_evaluates_without_config(tmp_path, clean, capsys):
    protocol, results, path = _older_row(tmp_path)
    assert main(["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "e0"), "--threads", "1"]) == 2
    assert "bare state dict" in capsys.readouterr().err
    reproduce_upgrade.upgrade_committed(protocol, None, results)
    code = main(["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "e1"), "--ways", "2",
                 "--test-episodes", "2", "--threads", "1"])  # no --config: the file says what it is
    out = capsys.readouterr().out
    assert code == 0, out
    (run_dir,) = list((tmp_path / "e1").iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert not record["bare_checkpoint"] and record["model"]["upgraded_from"]["same_weights"]


def test_upgrade_keeps_the_tensors_and_the_sha256_the_rows_were_evaluated_from(tmp_path, clean):
    protocol, results, path = _older_row(tmp_path, git=True)
    bare_sha, bare_state = _sha(path), read_model(path)[0]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=results, capture_output=True, text=True).stdout.strip()
    assert reproduce_upgrade.upgrade_committed(protocol, None, results) == path
    state, meta = read_model(path)
    assert same_tensors(bare_state, state) == [] and all(torch.equal(bare_state[k], state[k]) for k in bare_state)
    assert meta["upgraded_from"] == {"sha256": bare_sha, "commit": commit, "path": "checkpoints/tiny.pt",
                                     "same_weights": True}
    assert meta["config"]["data_root"] is None and _absolute_paths(meta) == []
    assert meta["upgraded_at_commit"] == "c0ffee"  # the code's commit: the files reproduce writes do not count
    table = reproduced.read_reproduced(results)
    assert (table["checkpoint_sha256"] == bare_sha).all() and (table["upgraded_checkpoint_sha256"] == _sha(path)).all()
    assert (results / "README.md").read_text() == reproduced.readme_text(table)
    lineage = reproduce_upgrade.verify_checkpoint(protocol, results)
    assert lineage["weights_checked"] and lineage["rows"] == 2
    assert reproduce_upgrade.upgrade_committed(protocol, None, results) is None  # nothing left to do
    # eval-only on the upgraded file gives back the committed per-episode accuracies exactly
    outcomes = reproduce_eval.evaluate_checkpoint(protocol, None, str(tmp_path / "eval"), threads=1,
                                                  results_dir=results)
    assert reproduce_eval.write_check(protocol, outcomes, "cmd", tmp_path / "check.json", results_dir=results)[1]
    # other tensors under the recorded sha256s are caught against the original in git
    raw = torch.load(path, weights_only=True)
    key = next(iter(raw["state_dict"]))
    raw["state_dict"][key] = raw["state_dict"][key] + 1
    torch.save(raw, path)
    with pytest.raises(BenchmarkError, match="is neither the file row tiny/2w1s was evaluated from"):
        reproduce_eval.evaluate_checkpoint(protocol, None, str(tmp_path / "eval"), results_dir=results)
    table["upgraded_checkpoint_sha256"] = _sha(path)
    reproduced.save(table, results)
    with pytest.raises(BenchmarkError, match="tensors differ from the file it was upgraded from"):
        reproduce_upgrade.verify_checkpoint(protocol, results)


def test_upgrade_refuses_a_file_its_rows_were_not_evaluated_from_and_a_dirty_tree(tmp_path, clean):
    protocol, results, path = _older_row(tmp_path)
    before = path.read_bytes()
    clean["dirty"] = ["learners/protonet.py"]
    with pytest.raises(BenchmarkError, match="only happens from a clean tree"):
        reproduce_upgrade.upgrade_committed(protocol, None, results)
    clean["dirty"] = []
    table = reproduced.read_reproduced(results)
    table["checkpoint_sha256"] = "0" * 64
    reproduced.save(table, results)
    with pytest.raises(BenchmarkError, match="is not the file row"):
        reproduce_upgrade.upgrade_committed(protocol, None, results)
    assert path.read_bytes() == before and not list(path.parent.glob(".*.pt"))


# -- the committed files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO / "results" / "checkpoints").glob("*.pt")), ids=lambda p: p.stem)
def test_committed_checkpoints_describe_themselves_and_match_their_rows(path):
    """Every committed model loads without a config (its metadata rebuilds the learner its tensors fit);
    its rows were evaluated from it or from the bare file it records being upgraded from (same tensors,
    read back from git where the history is there), on the dataset of the recorded fingerprint."""
    state, meta = read_model(path)
    assert meta is not None, f"{path.name} is a bare state dict"
    learner, _ = build_from_meta(meta, path.name)
    check_state_dict(learner, state, path.name)
    protocol = reproduce.load_protocol(path.stem)
    table = reproduced.read_reproduced()
    rows = table[table["protocol"] == path.stem]
    lineage = reproduce_upgrade.verify_checkpoint(protocol)
    assert lineage["rows"] == len(rows)
    assert (rows["dataset_fingerprint"] == meta["dataset"]["fingerprint"]).all()
    source = meta.get("upgraded_from")
    if source is None:
        assert (rows["checkpoint_sha256"] == _sha(path)).all() and rows["upgraded_checkpoint_sha256"].isna().all()
        return
    assert (rows["checkpoint_sha256"] == source["sha256"]).all()
    assert (rows["upgraded_checkpoint_sha256"] == _sha(path)).all()
    assert source["same_weights"] and source["path"] == f"results/checkpoints/{path.name}"
    assert not str(meta["upgraded_at_commit"]).endswith("-dirty")  # upgraded by committed code
    assert meta["config"]["data_root"] is None and _absolute_paths(meta) == []
    if reproduce_upgrade.original_bytes(path, source) is not None:  # a clone with the history
        assert lineage["weights_checked"]
