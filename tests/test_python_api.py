"""The Python API: the docs' notebook example runs as written, and run checkpoints describe themselves."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmark.episodefile import read_episodes
from tasks.errors import BenchmarkError

REPO = Path(__file__).resolve().parents[1]


def test_docs_notebook_example_runs(tmp_path, monkeypatch, capsys):
    """Every ```python block of docs/python-api.md, in order, in one namespace, in an empty folder."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "python-api.md").read_text(), re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "protonet" in out and "training classes" in out and "% over 10 episodes" in out
    run_rows = namespace["summary"]
    # evaluate() sampled the run's own test manifest: the same mean accuracy
    assert round(100 * namespace["per_episode"].mean(), 2) == run_rows["accuracy"].iloc[0]
    assert (Path(namespace["predictions"].attrs["run_dir"]) / "predictions.csv").exists()


def _episode_file(tmp_path: Path, text: str, suffix: str = ".json") -> Path:
    path = tmp_path / f"episodes{suffix}"
    path.write_text(text)
    return path


def _images(tmp_path: Path, names: list[str]) -> None:
    from PIL import Image

    for name in names:
        Image.new("L", (8, 8), 255).save(tmp_path / name)


@pytest.mark.parametrize("text, message", [
    ('{"episodes": [{"support": {"a": ["a1.png"], "b": ["b1.png"]}, "query": {"a": ["a2.png"], "c": ["b2.png"]}}]}',
     r"unknown class\(es\) \['c'\] in the query"),
    ('{"episodes": [{"support": {"a": ["a1.png"], "b": ["b1.png"]}, "query": {"a": ["a2.png", "a3.png"], '
     '"b": ["b2.png"]}}]}', "unequal query counts per class"),
    ('{"episodes": [{"support": {"a": ["a1.png"], "b": ["missing.png"]}, "query": {"a": ["a2.png"], "b": ["b2.png"]}}]}',
     r"support item of class 'b': file not found: .*missing.png"),
    ('{"episodes": [{"support": {"a": ["a1.png"], "b": [3]}, "query": {"a": ["a2.png"], "b": ["b2.png"]}}]}',
     "mixes file paths and dataset indices"),
    ('{"episodes": [{"support": {"a": ["a1.png"], "b": ["b1.png"]}, "query": {"a": ["a1.png"], "b": ["b2.png"]}}]}',
     "in both the support and the query"),
    ('{"episodes": [{"support": {"a": ["a1.png"]}, "query": {"a": ["a2.png"]}}]}', "at least 2 classes"),
    ('{"episodes": [{"query": {}}]}', "needs 'support' and 'query'"),
    ("{not json", "cannot read episode file"),
])
def test_episode_file_errors_name_the_problem(tmp_path, text, message):
    _images(tmp_path, ["a1.png", "a2.png", "a3.png", "b1.png", "b2.png"])
    with pytest.raises(BenchmarkError, match=message) as err:
        read_episodes(_episode_file(tmp_path, text))
    assert "episodes.json" in str(err.value)


def test_csv_episode_file(tmp_path):
    _images(tmp_path, ["a1.png", "a2.png", "b1.png", "b2.png"])
    ok = _episode_file(tmp_path, "episode,set,item,label\ne0,support,a1.png,a\ne0,support,b1.png,b\n"
                                 "e0,query,a2.png,a\ne0,query,b2.png,b\n", ".csv")
    (episode,) = read_episodes(ok).episodes
    assert episode.classes == ("a", "b") and episode.query[1] == ((tmp_path / "b2.png").resolve(),)
    bad = _episode_file(tmp_path, "episode,set,item\ne0,support,a1.png\n", ".csv")
    with pytest.raises(BenchmarkError, match=r"missing column\(s\) \['label'\]"):
        read_episodes(bad)
    bad = _episode_file(tmp_path, "episode,set,item,label\ne0,train,a1.png,a\n", ".csv")
    with pytest.raises(BenchmarkError, match="line 2: set must be 'support' or 'query'"):
        read_episodes(bad)
    with pytest.raises(BenchmarkError, match="episode file not found"):
        read_episodes(tmp_path / "none.json")


def test_dataset_index_items_are_checked(tiny_dataset, tmp_path):
    from benchmark.predict import episodes_from_file

    a, b = tiny_dataset.class_names[:2]
    ia, ib = tiny_dataset.items_by_class()[0], tiny_dataset.items_by_class()[1]
    meta = {"preprocessing": {}, "dataset": {"train_classes": [a]}}
    good = f'{{"episodes": [{{"support": {{"{a}": [{ia[0]}], "{b}": [{ib[0]}]}}, "query": {{"{a}": [{ia[1]}], "{b}": [{ib[1]}]}}}}]}}'
    episodes = episodes_from_file(read_episodes(_episode_file(tmp_path, good)), meta, tiny_dataset)
    assert episodes.in_training == [True] and episodes.specs[0].class_ids == (0, 1)
    for text, message in [(good.replace(f"[{ia[1]}]", f"[{ib[2]}]"), re.escape(f"is of class '{b}'")),
                          (good.replace(f"[{ia[1]}]", "[99999]"), "index 99999 is out of range"),
                          (good.replace(f'"{b}"', '"zebra"'), "unknown class 'zebra'")]:
        with pytest.raises(BenchmarkError, match=message):
            episodes_from_file(read_episodes(_episode_file(tmp_path, text)), meta, tiny_dataset)
    with pytest.raises(BenchmarkError, match="--dataset NAME --data-root DIR"):
        episodes_from_file(read_episodes(_episode_file(tmp_path, good)), meta, None)


def test_run_checkpoints_reproduce_the_runs_rows_for_text_and_maml(tmp_path):
    """A run's model files rebuild their learners (text encoder vocabulary included): evaluating them on
    the sampled test episodes gives the run's per-episode accuracies exactly."""
    from benchmark import evaluate, load_learner, run
    from benchmark.results import read_rows

    run(dataset="shapes", dataset_options={"n_classes": 40, "items_per_class": 20},
        methods=["protonet:image+text:attention", "maml:image"], backbone_options={"hidden": 8},
        train={"episodes": 2, "way": 5, "val_every": 0}, train_overrides={"maml": {"episodes": 2, "meta_batch": 2}},
        eval={"ways": [5], "shots": [1], "episodes": 6, "query": 3}, out=str(tmp_path), threads=1)
    (run_dir,) = [d for d in tmp_path.iterdir() if d.name != "manifests"]
    rows = read_rows(run_dir / "rows.jsonl")
    for slug in ("protonet-image+text-attention", "maml-image-none"):
        learner = load_learner(run_dir / "checkpoints" / f"{slug}.pt")
        assert learner.benchmark_info.meta["dataset"]["fingerprint"] and not learner.benchmark_info.bare
        predictions = evaluate(learner)
        mine = predictions.groupby("episode", sort=False)["correct"].mean().to_numpy()
        theirs = rows[(rows["learner"] + "-" + rows["modalities"] + "-" + rows["fusion"] == slug)
                      & (rows["metric"] == "accuracy")].sort_values("episode")["value"].to_numpy()
        assert len(mine) == 6 and (mine == theirs).all(), slug
