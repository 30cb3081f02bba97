"""A run knows what it wrote: a damaged or partial ``rows.jsonl`` is detected, ``table`` does not make it
permanent, and a rerun recomputes only what is missing (issue 29 item 11)."""
from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.results import read_rows
from tests.conftest import only_run_dir, tiny_args

# two methods, two evaluations (5w1s, 5w2s) of 4 episodes: 24 rows per method
ARGS = ("--learners", "protonet", "--modalities", "image,text", "--shots", "1,2")
KEY = ["learner", "modalities", "fusion", "n_way", "n_shot", "episode", "metric"]
IMAGE_MODEL, TEXT_MODEL = "checkpoints/protonet-image-none.pt", "checkpoints/protonet-text-none.pt"


def run_args(out: Path) -> list[str]:
    return tiny_args(out, *ARGS, steps=2)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """The ``--out`` folder of one clean run (copied by each test, never changed)."""
    out = tmp_path_factory.mktemp("clean")
    assert main(run_args(out)) == 0
    return out


@pytest.fixture
def run(clean, tmp_path) -> tuple[Path, Path]:
    """A copy of the clean run: ``(its --out, its run folder)``."""
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    return out, only_run_dir(out)


def lines(folder: Path) -> list[bytes]:
    return (folder / "rows.jsonl").read_bytes().splitlines(keepends=True)


def keep_lines(folder: Path, n: int) -> None:
    (folder / "rows.jsonl").write_bytes(b"".join(lines(folder)[:n]))


def values(folder: Path) -> dict[tuple, float]:
    rows = read_rows(folder / "rows.jsonl")
    assert not rows.duplicated(KEY).any(), "duplicated rows"
    return {tuple(r[k] for k in KEY): r["value"] for r in rows.to_dict("records")}


def summaries(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in ("summary.csv", "summary.md")}


def test_table_on_a_truncated_run_refuses_to_write_partial_summaries(run, capsys, caplog):
    _, folder = run
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != "rows.jsonl"}
    keep_lines(folder, len(lines(folder)) // 2)  # the text method's rows are gone
    assert main(["table", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "rows.jsonl" in err and "protonet-text-none: no rows" in err and "rerun" in err.lower() and "--allow-damaged" in err
    assert {n: (folder / n).read_bytes() for n in before} == before  # nothing written

    caplog.set_level(logging.WARNING)
    assert main(["table", str(folder), "--allow-damaged"]) == 0  # written, loudly
    assert "protonet-text-none" in caplog.text and "rerun" in caplog.text


@pytest.mark.parametrize("model", ["kept", "deleted"])
def test_rerun_recomputes_only_the_missing_rows(run, clean, model, caplog):
    out, folder = run
    keep_lines(folder, 30)  # image intact, text: 5w1s whole, 5w2s 6 of 12 rows
    stamp = (folder / IMAGE_MODEL).stat().st_mtime_ns
    if model == "deleted":
        (folder / TEXT_MODEL).unlink()
    text_stamp = (folder / TEXT_MODEL).stat().st_mtime_ns if model == "kept" else None
    caplog.set_level(logging.INFO)
    assert main(run_args(out)) == 0
    assert "protonet[image]: already in" in caplog.text  # intact: skipped
    assert "rows.jsonl" in caplog.text and "5w2s" in caplog.text  # the damage is named
    assert values(folder) == values(only_run_dir(clean))  # same episodes, same values, no duplicates
    assert (folder / IMAGE_MODEL).stat().st_mtime_ns == stamp  # not retrained
    if model == "kept":  # re-evaluated from its saved model, not retrained
        assert (folder / TEXT_MODEL).stat().st_mtime_ns == text_stamp
    assert summaries(folder) == summaries(only_run_dir(clean))
    caplog.clear()
    assert main(["table", str(folder)]) == 0 and "damaged" not in caplog.text


def test_a_row_cut_mid_line_is_detected_and_repaired(run, clean, capsys):
    out, folder = run
    data = (folder / "rows.jsonl").read_bytes()
    (folder / "rows.jsonl").write_bytes(data[: len(data) - 40])  # the last line is cut off
    assert main(["table", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "rows.jsonl" in err and "line 48" in err and "cut off" in err
    assert main(run_args(out)) == 0
    assert (folder / "rows.jsonl").read_bytes().endswith(b"\n")
    assert values(folder) == values(only_run_dir(clean))
    assert list(folder.glob("rows.damaged-*.jsonl"))  # the damaged file is kept aside, not lost


def test_an_intact_run_is_untouched_by_a_rerun(run, caplog):
    out, folder = run
    record = json.loads((folder / "run.json").read_text())["rows"]  # the run knows what it wrote
    assert {m: r["rows"] for m, r in record.items()} == {"protonet-image-none": 24, "protonet-text-none": 24}
    assert record["protonet-text-none"]["evals"] == {"5w1s": 12, "5w2s": 12}
    before = {p: p.read_bytes() for p in (folder / "rows.jsonl", folder / "summary.csv", folder / IMAGE_MODEL,
                                          folder / TEXT_MODEL)}
    caplog.set_level(logging.INFO)
    assert main(run_args(out)) == 0
    assert "damaged" not in caplog.text and caplog.text.count("already in") == 2
    assert {p: p.read_bytes() for p in before} == before
    assert json.loads((folder / "run.json").read_text())["rows"] == record


def test_gzipped_rows_and_old_runs_without_a_record(run, capsys, caplog):
    _, folder = run
    plain = folder / "rows.jsonl"
    gz = folder / "rows.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))  # as kept under results/
    data = plain.read_bytes()
    plain.unlink()
    caplog.set_level(logging.WARNING)
    assert main(["table", str(folder)]) == 0 and "damaged" not in caplog.text  # intact .gz: no alarm

    gz.write_bytes(gzip.compress(b"".join(data.splitlines(keepends=True)[:30]), mtime=0))
    assert main(["table", str(folder)]) == 2
    assert "rows.jsonl.gz" in capsys.readouterr().err

    record = json.loads((folder / "run.json").read_text())
    del record["rows"]  # a run folder written before runs recorded their rows: unknown, no false alarm
    (folder / "run.json").write_text(json.dumps(record))
    caplog.clear()
    assert main(["table", str(folder)]) == 0 and "damaged" not in caplog.text
