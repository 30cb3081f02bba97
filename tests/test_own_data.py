"""Own data (issue 18): options listed by `ls datasets NAME`, caption columns found, the columns and
class text used recorded in run.json, and small datasets told which keys to set."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.cli import main
from tasks.datasets import load_dataset
from test_datasets import _user_csv


def test_ls_datasets_name_prints_its_options(capsys):
    assert main(["ls", "datasets", "imagetext_folder"]) == 0
    out = capsys.readouterr().out
    for option in ("caption_column = None", "class_text = None", "split_fractions = (0.6, 0.2, 0.2)",
                   "image_size = 84", "classes.csv"):
        assert option in out
    assert main(["ls", "datasets", "omniglot"]) == 0
    assert "split = 'vinyals'" in capsys.readouterr().out


def test_hf_finds_a_caption_column_and_records_the_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    from PIL import Image

    rng = np.random.default_rng(0)
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(12)],
         "label": [i // 3 for i in range(12)], "caption": [f"caption {i}" for i in range(12)]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("abcd")),
                                    "caption": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "saved"))
    data = load_dataset("hf", str(tmp_path / "saved"), image_size=8)
    assert data.captions is not None and data.captions[4] == "caption 4"
    assert data.info["columns"]["caption"] == "caption" and data.info["columns"]["image"] == "image"


def test_imagetext_folder_records_columns_and_class_text(tmp_path):
    root = _user_csv(tmp_path / "mine", n_classes=6, per_class=4)
    data = load_dataset("imagetext_folder", str(root), image_size=8)
    assert data.info["columns"] == {"image": "image", "label": "label", "caption": "caption", "split": None,
                                    "class_text": str(root / "classes.csv")}


def _run(root, out, *extra):
    return main(["run", "--dataset", "imagetext_folder", "--data-root", str(root), "--learners", "protonet",
                 "--modalities", "image+text", "--fusions", "concat", "--out", str(out), "--threads", "1",
                 "--set", "dataset_options.image_size=16", "--set", "backbone_options.hidden=8", *extra])


def test_small_dataset_error_names_the_keys_then_runs_and_records_columns(tmp_path, capsys):
    root = _user_csv(tmp_path / "mine", n_classes=10, per_class=5)
    assert _run(root, tmp_path / "runs") == 2
    err = capsys.readouterr().err
    assert "train.way=20 is larger than the 6 classes" in err and "set train.way <= 6" in err
    assert "train.val_way" in err and "--ways" in err
    small = ["--ways", "2", "--shots", "1", "--queries", "2", "--test-episodes", "2", "--train-episodes", "2",
             "--set", "train.way=2", "--set", "train.shot=1", "--set", "train.query=2", "--set", "train.val_way=2",
             "--set", "train.val_query=2", "--set", "train.val_episodes=2"]
    assert _run(root, tmp_path / "runs", *small) == 0, capsys.readouterr().err
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/run.json")]
    assert sorted(r["status"] for r in records) == ["failed", "finished"]  # the first attempt is recorded too
    (record,) = [r for r in records if r["status"] == "finished"]
    assert record["dataset"]["info"]["columns"]["caption"] == "caption"
    assert record["dataset"]["info"]["columns"]["class_text"].endswith("classes.csv")
