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
     r"class\(es\) \['c'\] of the query have no support items"),
    ('{"episodes": [{"support": {"a": ["a1.png"], "b": ["b1.png", "b2.png"]}, "query": {"a": ["a2.png"]}}]}',
     r"unequal support counts per class \('a': 1, 'b': 2\)"),
    ('{"episodes": [{"support": {"a": ["a1.png"], "b": []}, "query": {"a": ["a2.png"], "b": ["b2.png"]}}]}',
     r"class\(es\) \['b'\] have no support items"),
    ('{"episodes": [{"support": {"a": ["a1.png"], "b": ["b1.png"]}, "query": {"a": [], "b": []}}]}',
     "has no query items: give at least one"),
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


def test_query_counts_may_differ_per_class(tmp_path):
    """One-shot trials with a single query, and classes without queries, are valid episodes."""
    _images(tmp_path, ["a1.png", "a2.png", "a3.png", "b1.png", "b2.png", "c1.png"])
    text = ('{"episodes": [{"id": "t", "support": {"a": ["a1.png"], "b": ["b1.png"], "c": ["c1.png"]}, '
            '"query": {"b": ["b2.png"]}}, {"id": "m", "support": {"a": ["a1.png"], "b": ["b1.png"]}, '
            '"query": {"a": ["a2.png", "a3.png"], "b": []}}]}')
    trial, mixed = read_episodes(_episode_file(tmp_path, text)).episodes
    assert trial.classes == ("a", "b", "c") and [len(q) for q in trial.query] == [0, 1, 0]
    assert [len(q) for q in mixed.query] == [2, 0]
    csv = _episode_file(tmp_path, "episode,set,item,label\ne0,support,a1.png,a\ne0,support,b1.png,b\n"
                                  "e0,query,a2.png,a\ne0,query,a3.png,a\n", ".csv")
    (episode,) = read_episodes(csv).episodes
    assert [len(q) for q in episode.query] == [2, 0]


def test_episodes_with_unequal_query_counts_load_with_their_labels(tiny_dataset):
    """Specs whose classes hold different numbers of queries (some none) load with one label per query
    item, in class order; so do their cached embeddings, and predictions cover every query."""
    import torch

    from benchmark.evaluate import EmbeddedEpisodes, evaluate
    from learners import LEARNERS, ModelSpec
    from tasks.episode import EpisodeLoader, EpisodeSpec, TaskSetting
    from tasks.sampler import EpisodeManifest

    items = tiny_dataset.items_by_class()
    spec = EpisodeSpec((0, 1, 2), ((items[0][0],), (items[1][0],), (items[2][0],)),
                       ((items[0][1], items[0][2]), (), (items[2][1],)), 0)
    assert spec.n_way == 3 and spec.n_shot == 1 and spec.query_counts == (2, 0, 1) and spec.n_queries == 3
    assert spec.n_query is None and EpisodeSpec.from_json(spec.to_json()) == spec
    setting = TaskSetting(("image",), ("image",))
    loader = EpisodeLoader(tiny_dataset.images, tiny_dataset.mean, tiny_dataset.std, setting=setting)
    episode = loader.load(spec)
    assert episode.query_labels.tolist() == [0, 0, 2] and episode.query["image"].shape[0] == 3
    assert episode.support_labels.tolist() == [0, 1, 2]
    torch.manual_seed(0)
    model = ModelSpec(("image",), setting, tuple(tiny_dataset.image_shape), backbone_options={"hidden": 8})
    learner = LEARNERS.get("protonet")(model, LEARNERS.get("protonet").Config())
    manifest = EpisodeManifest("shapes", "", "test", 3, 1, 0, 0, (spec, spec))
    cached = EmbeddedEpisodes(learner.eval(), loader, manifest, torch.device("cpu")).load(spec)
    assert cached.query_labels.tolist() == [0, 0, 2]
    accuracy = evaluate(learner, loader, manifest, torch.device("cpu"), metrics=["accuracy"])["accuracy"]
    assert set(accuracy * 3) <= {0.0, 1.0, 2.0, 3.0}  # a fraction of the episode's 3 queries


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
