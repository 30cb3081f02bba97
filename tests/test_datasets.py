"""Real-dataset loaders: real Omniglot and miniImageNet (shared/data) and generated official-layout fixtures."""
from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.datasets import DATASETS, load_dataset
from tasks.datasets.imagecache import package_data, wordnet_synsets
from tasks.episode import EpisodeLoader
from tasks.errors import BenchmarkError
from tasks.sampler import EpisodeSampler

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    env = os.environ.get("MMFS_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", REPO.parents[1] / "shared" / "data"]
    return next((c for c in candidates if (c / "omniglot-py").is_dir() and (c / "miniImageNet").is_dir()), None)


SHARED = _shared_data()
needs_shared = pytest.mark.skipif(
    SHARED is None, reason="real data not found: set MMFS_SHARED_DATA to the folder holding omniglot-py/ and "
                           "miniImageNet/ (../shared/data beside the checkout)")


def _timed_load(name: str, **options):
    start = time.perf_counter()
    data = load_dataset(name, str(SHARED), **options)
    return data, time.perf_counter() - start


@pytest.fixture(scope="session")
def omniglot():
    """Real Omniglot, loaded twice: the second load comes from the decoded-image cache."""
    first, t_first = _timed_load("omniglot")
    second, t_second = _timed_load("omniglot")
    return second, first, t_first, t_second


MINI_SUBSET = {"classes_per_split": 5, "max_per_class": 20}  # 300 images: the default run stays fast


@pytest.fixture(scope="session")
def mini():
    """A real miniImageNet subset (5 classes per split, 20 images each), loaded twice (second: cached)."""
    first, t_first = _timed_load("miniimagenet", **MINI_SUBSET)
    second, t_second = _timed_load("miniimagenet", **MINI_SUBSET)
    return second, first, t_first, t_second


def _check_episode(data, split: str, n_way: int = 5, n_shot: int = 1, n_query: int = 3):
    """Assert that one sampled episode looks right (shapes, value range, labels); returns it."""
    spec = EpisodeSampler(data, split, n_way, n_shot, n_query).sample(np.random.default_rng(0))
    from tasks.episode import TaskSetting

    sides = ("image",) if data.captions is None else ("image", "text")
    text = None if data.captions is None else np.zeros((len(data.labels), 1))  # stands in for prepared text
    episode = EpisodeLoader(data.images, data.mean, data.std, item_text=None if text is None else
                            __import__("torch").as_tensor(text), setting=TaskSetting(sides, sides)).load(spec)
    c, h, w = data.image_shape
    assert episode.support["image"].shape == (n_way * n_shot, c, h, w)
    assert episode.query["image"].shape == (n_way * n_query, c, h, w)
    x = episode.query["image"]
    assert x.dtype.is_floating_point and x.isfinite().all()
    assert -10 < float(x.min()) < float(x.max()) < 10 and float(x.std()) > 0.1  # normalised, not raw 0..255
    assert episode.support_labels.tolist() == sorted(list(range(n_way)) * n_shot)
    assert set(episode.class_ids.tolist()) <= set(data.split_classes(split).tolist())
    for way, items in enumerate(spec.query):  # every query item belongs to its way's class
        assert (data.labels[list(items)] == spec.class_ids[way]).all()
    return episode


# ----------------------------------------------------------------------------- real data


@needs_shared
def test_omniglot_counts_match_vinyals(omniglot):
    data, _, _, _ = omniglot
    assert data.image_shape == (1, 28, 28) and data.images.dtype == np.uint8
    assert {s: len(c) for s, c in data.splits.items()} == {"train": 1028 * 4, "val": 172 * 4, "test": 423 * 4}
    assert data.n_classes == 1623 * 4
    assert (np.bincount(data.labels, minlength=data.n_classes) == 20).all()
    assert data.captions is None and len(data.class_texts) == data.n_classes
    assert data.class_texts[data.class_names.index("Latin/character05/rot090")] == \
        "Latin character 5, rotated by 90 degrees"


@needs_shared
def test_omniglot_rotated_classes_are_true_rotations(omniglot):
    data, _, _, _ = omniglot
    items = data.items_by_class()
    index = {n: i for i, n in enumerate(data.class_names)}
    for char in ("Latin/character05", "Korean/character10", "Angelic/character01"):
        base = data.images[items[index[f"{char}/rot000"]]]
        assert base.std() > 0
        for k, rot in enumerate(("rot090", "rot180", "rot270"), start=1):
            rotated = data.images[items[index[f"{char}/{rot}"]]]
            np.testing.assert_array_equal(rotated, np.rot90(base, k=k, axes=(2, 3)))


@needs_shared
def test_omniglot_trainval_split_is_snells_final_split(omniglot):
    """``vinyals_trainval``: train on the 1,200 train + val characters, same 423 test characters, no val."""
    data = omniglot[0]
    trainval = load_dataset("omniglot", str(SHARED), split="vinyals_trainval")
    assert sorted(trainval.splits) == ["test", "train"]
    assert len(trainval.splits["train"]) == 1200 * 4 and len(trainval.splits["test"]) == 423 * 4
    np.testing.assert_array_equal(trainval.splits["test"], data.splits["test"])
    np.testing.assert_array_equal(np.sort(trainval.splits["train"]),
                                  np.sort(np.concatenate([data.splits["train"], data.splits["val"]])))
    with pytest.raises(BenchmarkError, match="vinyals_trainval"):
        load_dataset("omniglot", str(SHARED), split="trainval")


@needs_shared
def test_omniglot_background_split_and_cache(omniglot):
    data, first, t_first, t_second = omniglot
    np.testing.assert_array_equal(first.images[::997], data.images[::997])
    assert first.fingerprint() == data.fingerprint()
    print(f"omniglot load: first {t_first:.1f} s, cached {t_second:.1f} s")
    lake = load_dataset("omniglot", str(SHARED), split="background")
    assert len(lake.splits["test"]) == 659 * 4
    assert len(lake.splits["train"]) + len(lake.splits["val"]) == 964 * 4
    assert len(lake.splits["val"]) > 0


@needs_shared
def test_omniglot_episode(omniglot):
    episode = _check_episode(omniglot[0], "test", n_way=20, n_shot=1, n_query=5)
    assert episode.support["image"].shape == (20, 1, 28, 28) and "text" not in episode.query


def _check_wordnet_text(data) -> None:
    wnids = data.info["wnids"]
    synsets = wordnet_synsets()
    for wnid, name, text in zip(wnids, data.class_names, data.class_texts):
        entry = synsets[wnid]
        assert entry["names"] and entry["gloss"] and name and entry["gloss"] in text


def _shipped_wnids(per_split: int | None = None) -> list[str]:
    return [w for s in ("train", "val", "test")
            for w in package_data("miniimagenet", f"{s}.txt").read_text().split()[:per_split]]


@needs_shared
def test_miniimagenet_subset_counts_text_and_cache(mini):
    """The default run's real-data test: a subset keeps the first classes and first images of each."""
    data, first, t_first, t_second = mini
    assert data.image_shape == (3, 84, 84)
    assert {s: len(c) for s, c in data.splits.items()} == {"train": 5, "val": 5, "test": 5}
    assert (np.bincount(data.labels, minlength=data.n_classes) == 20).all()
    assert data.info["wnids"] == _shipped_wnids(5)
    assert data.info["subset"] == {"mpc": 20, "cps": 5}
    assert data.captions is None and "text" not in data.modalities
    _check_wordnet_text(data)
    with (SHARED / "miniImageNet" / "train.csv").open() as f:  # first rows of the first class, in CSV order
        firsts = [r["filename"] for r in csv.DictReader(f)][:20]
    expected = np.asarray(Image.open(SHARED / "miniImageNet" / "images" / firsts[19]).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(data.images[19], expected)
    assert isinstance(data.images, np.memmap)  # served from the decoded-image cache
    assert first.fingerprint() == data.fingerprint()
    print(f"miniimagenet subset load: first {t_first:.2f} s, cached {t_second:.2f} s")


@needs_shared
def test_miniimagenet_subset_is_its_own_dataset(mini):
    """Another subset has another fingerprint (so other manifests and feature-cache keys) and cache file."""
    data = mini[0]
    fewer = load_dataset("miniimagenet", str(SHARED), classes_per_split=5, max_per_class=16)
    assert fewer.fingerprint() != data.fingerprint()
    assert fewer.images.filename != data.images.filename
    np.testing.assert_array_equal(fewer.images[:16], data.images[:16])  # the same first images
    only_classes = load_dataset("miniimagenet", str(SHARED), classes_per_split=2, max_per_class=3)
    assert only_classes.info["wnids"] == _shipped_wnids(2) and len(only_classes.labels) == 18


@needs_shared
@pytest.mark.parametrize("options, match", [
    ({"max_per_class": 0}, "max_per_class=0 must be a positive integer"),
    ({"classes_per_split": -1}, "classes_per_split=-1 must be a positive integer"),
    ({"max_per_class": 2.5}, "max_per_class: expected an integer, got 2.5"),
    ({"classes_per_split": 17}, r"classes_per_split=17 asks for more classes than .*val.csv has \(16\)"),
])
def test_miniimagenet_subset_options_are_checked(options, match):
    with pytest.raises(BenchmarkError, match=match):
        load_dataset("miniimagenet", str(SHARED), **options)


@needs_shared
@pytest.mark.slow
def test_miniimagenet_full_counts_text_and_cache():
    """The complete set (50,000 images: slow the first time, while the decoded-image cache is built)."""
    first, t_first = _timed_load("miniimagenet")
    data, t_second = _timed_load("miniimagenet")
    assert data.image_shape == (3, 84, 84)
    assert {s: len(c) for s, c in data.splits.items()} == {"train": 64, "val": 16, "test": 20}
    per_class = np.bincount(data.labels, minlength=100)
    # train and val classes are complete (600 images each); the test classes hold their first 100
    assert {s: set(per_class[c].tolist()) for s, c in data.splits.items()} == {
        "train": {600}, "val": {600}, "test": {100}}
    assert data.captions is None and "text" not in data.modalities
    _check_wordnet_text(data)
    assert data.class_names[data.info["wnids"].index("n01532829")] == "house finch"
    assert _shipped_wnids() == data.info["wnids"] and data.info["subset"] == {}
    assert isinstance(data.images, np.memmap)  # served from the decoded-image cache
    assert first.fingerprint() == data.fingerprint()
    print(f"miniimagenet load: first {t_first:.1f} s, cached {t_second:.2f} s")
    assert t_second < t_first


@needs_shared
def test_miniimagenet_episode_and_no_item_text(mini):
    from tasks.episode import TaskSetting
    from tasks.errors import UnsupportedSetting

    data = mini[0]
    _check_episode(data, "test", n_way=5, n_shot=5, n_query=15)
    with pytest.raises(UnsupportedSetting, match="no instance-level text"):
        EpisodeLoader(data.images, data.mean, data.std, setting=TaskSetting(("image", "text"), ("image",)))


@needs_shared
def test_miniimagenet_missing_images_and_corrupt_file(tmp_path):
    root = tmp_path / "miniImageNet"
    (root / "images").mkdir(parents=True)
    src = SHARED / "miniImageNet"
    rows = {}
    for split in ("train", "val", "test"):
        with (src / f"{split}.csv").open() as f:
            reader = list(csv.DictReader(f))
        firsts = {}
        for r in reader:
            firsts.setdefault(r["label"], []).append(r)
        rows[split] = [r for group in list(firsts.values())[:2] for r in group[:2]]
        with (root / f"{split}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["filename", "label"])
            w.writeheader()
            w.writerows(rows[split])
    for split_rows in rows.values():
        for r in split_rows:
            (root / "images" / r["filename"]).write_bytes((src / "images" / r["filename"]).read_bytes())
    data = load_dataset("miniimagenet", str(tmp_path))
    assert data.n_classes == 6 and len(data.labels) == 12
    victim = rows["val"][0]["filename"]
    (root / "images" / victim).write_bytes(b"not a jpeg")
    with pytest.raises(BenchmarkError, match=victim):
        load_dataset("miniimagenet", str(tmp_path))
    (root / "images" / victim).unlink()
    with pytest.raises(BenchmarkError, match=rows["val"][0]["label"]):
        load_dataset("miniimagenet", str(tmp_path))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["omniglot", "miniimagenet", "tieredimagenet", "cifarfs", "fc100", "cub"])
def test_missing_root_explains_layout(name, tmp_path):
    with pytest.raises(BenchmarkError) as err:
        load_dataset(name, str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "xpected" in message and ("download" in message.lower())


def test_unknown_option_is_a_clear_error(tmp_path):
    with pytest.raises(BenchmarkError, match=r"dataset_options \(dataset 'omniglot'\): unknown key 'imgsize'. Did you mean 'image_size'"):
        load_dataset("omniglot", str(tmp_path), imgsize=32)


def test_omniglot_split_file_not_matching_disk(tmp_path):
    root = tmp_path / "omniglot-py"
    for folder, alphabet in (("images_background", "Latin"), ("images_evaluation", "Korean")):
        for c in (1, 2):
            d = root / folder / alphabet / f"character{c:02d}"
            d.mkdir(parents=True)
            for j in range(2):
                Image.fromarray(np.full((105, 105), 255 * j, np.uint8)).convert("1").save(d / f"{c:04d}_{j:02d}.png")
    with pytest.raises(BenchmarkError, match="not in .*Angelic/character01/rot000"):
        load_dataset("omniglot", str(tmp_path))
    lake = load_dataset("omniglot", str(tmp_path), split="background", rotations=[0, 180], val_fraction=0.5)
    assert lake.n_classes == 8 and len(lake.splits["test"]) == 4


# ----------------------------------------------------------------------------- fixtures in official layouts


def _png(path: Path, value: int, size=(10, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def test_tieredimagenet_pickle_layout(tmp_path):
    import io

    root = tmp_path / "tiered-imagenet"
    root.mkdir()
    synsets = wordnet_synsets()
    rows = {s: [r.split(",") for r in package_data("tieredimagenet", f"{s}.csv").read_text().split()]
            for s in ("train", "val", "test")}
    assert [len(v) for v in rows.values()] == [351, 97, 160]
    assert [len({g for _, g in v}) for v in rows.values()] == [20, 6, 8]
    assert all(w in synsets and g in synsets for v in rows.values() for w, g in v)
    for split, split_rows in rows.items():
        classes = split_rows[:3]
        encoded, labels = [], []
        for i, (wnid, _) in enumerate(classes):
            for j in range(4):
                buf = io.BytesIO()
                Image.fromarray(np.full((84, 84, 3), 10 * i + j, np.uint8)).save(buf, format="PNG")
                encoded.append(np.frombuffer(buf.getvalue(), np.uint8))
                labels.append(i)
        # Ren et al. store the ImageNet class-name strings, not the wnids.
        strs = [", ".join(synsets[w]["names"]).encode() for w, _ in classes]
        with (root / f"{split}_labels.pkl").open("wb") as f:
            pickle.dump({"label_specific": np.array(labels), "label_general": np.zeros(len(labels), int),
                         "label_specific_str": strs, "label_general_str": [b"x"]}, f)
        with (root / f"{split}_images_png.pkl").open("wb") as f:
            pickle.dump(encoded, f)
    data = load_dataset("tieredimagenet", str(tmp_path))
    assert data.image_shape == (3, 84, 84) and data.n_classes == 9
    assert data.info["wnids"][:3] == [w for w, _ in rows["train"][:3]]
    assert "a kind of" in data.class_texts[0] and synsets[rows["train"][0][0]]["gloss"] in data.class_texts[0]
    assert int(data.images[data.labels == 1][2, 0, 0, 0]) == 12
    _check_episode(data, "val", n_way=3, n_shot=1, n_query=2)


def test_tieredimagenet_folder_layout_names_missing_classes(tmp_path):
    root = tmp_path / "tiered-imagenet"
    for split in ("train", "val", "test"):
        for k, row in enumerate(package_data("tieredimagenet", f"{split}.csv").read_text().split()):
            _png(root / split / row.split(",")[0] / "a.JPEG", k, size=(6, 6))
    data = load_dataset("tieredimagenet", str(tmp_path), image_size=16)
    assert {s: len(c) for s, c in data.splits.items()} == {"train": 351, "val": 97, "test": 160}
    victim = root / "test" / "n07930864"
    (victim / "a.JPEG").unlink()
    victim.rmdir()
    with pytest.raises(BenchmarkError, match="n07930864"):
        load_dataset("tieredimagenet", str(tmp_path), image_size=16)


@pytest.fixture()
def cifar_root(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    pairs = [p for s in ("train", "val", "test") for p in json.loads(package_data("cifar_fs", f"{s}.json").read_text())]
    fine = sorted({f for _, f in pairs})
    coarse = sorted({c for c, _ in pairs})
    coarse_of = {f: c for c, f in pairs}
    assert len(fine) == 100 and len(coarse) == 20
    with (folder / "meta").open("wb") as f:
        pickle.dump({"fine_label_names": fine, "coarse_label_names": coarse}, f)
    rng = np.random.default_rng(0)
    for part, per_class in (("train", 3), ("test", 1)):
        y = np.repeat(np.arange(100), per_class)
        with (folder / part).open("wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (len(y), 3072), dtype=np.uint8), "fine_labels": y.tolist(),
                         "coarse_labels": [coarse.index(coarse_of[fine[i]]) for i in y]}, f)
    return tmp_path


def test_cifarfs_and_fc100(cifar_root):
    fs = load_dataset("cifarfs", str(cifar_root))
    assert {s: len(c) for s, c in fs.splits.items()} == {"train": 64, "val": 16, "test": 20}
    assert fs.image_shape == (3, 32, 32) and (np.bincount(fs.labels) == 4).all()
    assert fs.class_texts[0].startswith(fs.class_names[0].replace("_", " ") + ", a kind of ")
    _check_episode(fs, "test", n_way=5, n_shot=1, n_query=3)
    fc = load_dataset("fc100", str(cifar_root), image_size=20)
    assert {s: len(c) for s, c in fc.splits.items()} == {"train": 60, "val": 20, "test": 20}
    assert fc.image_shape == (3, 20, 20)
    supers = {s: {fc.info["super_classes"][c] for c in fc.splits[s]} for s in fc.splits}
    assert [len(v) for v in supers.values()] == [12, 4, 4] and not supers["train"] & supers["test"]


def test_cub_with_captions(tmp_path):
    cub = tmp_path / "CUB_200_2011"
    classes = sorted(c for s in ("train", "val", "test") for c in json.loads(package_data("cub", f"{s}.json").read_text()))
    assert len(classes) == 200
    lines, k = [], 0
    for ci, c in enumerate(classes, start=1):
        for j in range(2):
            k += 1
            rel = f"{c}/{c.split('.')[1]}_{j}.jpg"
            _png(cub / "images" / rel, k, size=(9, 7))
            lines.append(f"{k} {rel}")
            caption = tmp_path / "text_c10" / Path(rel).with_suffix(".txt")
            caption.parent.mkdir(parents=True, exist_ok=True)
            caption.write_text(f"this bird {k} has a red crown\nsecond sentence {k}\n")
    (cub / "images.txt").write_text("\n".join(lines) + "\n")
    (cub / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, start=1)))
    data = load_dataset("cub", str(tmp_path), image_size=16)
    assert {s: len(c) for s, c in data.splits.items()} == {"train": 100, "val": 50, "test": 50}
    assert data.modalities == ("image", "text") and data.captions[0] == "this bird 1 has a red crown"
    assert data.class_names[0] == "Black footed Albatross" and data.class_texts[0] == "Black footed Albatross"
    assert load_dataset("cub", str(tmp_path), image_size=16, caption="all").captions[1].endswith("second sentence 2")
    (tmp_path / "text_c10" / classes[3] / f"{classes[3].split('.')[1]}_1.txt").unlink()
    with pytest.raises(BenchmarkError, match="caption file .*missing"):
        load_dataset("cub", str(tmp_path), image_size=16)


def _user_csv(root: Path, n_classes: int = 8, per_class: int = 6) -> Path:
    rows = []
    for c in range(n_classes):
        for j in range(per_class):
            rel = f"pics/{c}_{j}.png"
            _png(root / rel, 100 * c + j, size=(20, 24))
            rows.append({"image": rel, "label": f"class{c}", "caption": f"a picture of thing {c} number {j}"})
    with (root / "data.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "label", "caption"])
        w.writeheader()
        w.writerows(rows)
    (root / "classes.csv").write_text("label,description\n" + "".join(f"class{c},the {c}th kind of thing\n"
                                                                      for c in range(n_classes)))
    return root


def test_imagetext_folder_csv_and_folders(tmp_path):
    root = _user_csv(tmp_path / "csv")
    data = load_dataset("imagetext_folder", str(root), image_size=16, split_fractions=[0.5, 0.25, 0.25], seed=3)
    assert data.n_classes == 8 and data.image_shape == (3, 16, 16) and data.modalities == ("image", "text")
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    assert data.class_texts[data.class_names.index("class3")] == "the 3th kind of thing"
    again = load_dataset("imagetext_folder", str(root / "data.csv"), image_size=16,
                         split_fractions=[0.5, 0.25, 0.25], seed=3)
    assert all((again.splits[s] == data.splits[s]).all() for s in data.splits)
    _check_episode(data, "train", n_way=3, n_shot=2, n_query=2)
    folders = tmp_path / "folders"
    for split, labels in (("train", "ab"), ("val", "c"), ("test", "de")):
        for lab in labels:
            for j in range(3):
                _png(folders / split / lab / f"{j}.jpg", ord(lab) + j)
    plain = load_dataset("imagetext_folder", str(folders), image_size=8, grayscale=True)
    assert plain.captions is None and plain.class_texts is None and plain.image_shape == (1, 8, 8)
    assert [plain.class_names[c] for c in plain.splits["test"]] == ["d", "e"]
    (root / "pics" / "2_1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(BenchmarkError, match="2_1.png"):
        load_dataset("imagetext_folder", str(root), image_size=16)


def test_imagetext_folder_runs_end_to_end_from_cli(tmp_path):
    root = _user_csv(tmp_path / "mydata", n_classes=10, per_class=5)
    out = tmp_path / "runs"
    cmd = [sys.executable, str(REPO / "run_benchmark.py"), "run", "--dataset", "imagetext_folder",
           "--data-root", str(root), "--train-episodes", "2", "--test-episodes", "3", "--learners", "protonet",
           "--modalities", "image,image+text", "--fusions", "concat", "--ways", "2", "--shots", "1",
           "--queries", "2", "--out", str(out), "--threads", "1",
           "--set", "dataset_options.image_size=16", "--set", "dataset_options.split_fractions=[0.6,0.2,0.2]",
           "--set", "train.way=2", "--set", "train.shot=1", "--set", "train.query=2",
           "--set", "train.val_episodes=2", "--set", "train.val_way=2", "--set", "train.val_query=2",
           "--set", "backbone_options.hidden=8"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summaries = list(out.glob("*/summary.csv"))
    assert len(summaries) == 1
    text = summaries[0].read_text()
    assert "image+text" in text and "protonet" in text


def test_hf_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(24)]
    labels = [i // 4 for i in range(24)]
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=list("abcdef")),
                                  "txt": datasets.Value("string"), "desc": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"img": images, "y": labels, "txt": [f"caption {i}" for i in range(24)],
                                     "desc": [f"class {'abcdef'[y]}" for y in labels]}, features=features)
    ds.save_to_disk(str(tmp_path / "saved"))
    data = load_dataset("hf", str(tmp_path / "saved"), image_column="img", label_column="y", text_column="txt",
                        class_text_column="desc", image_size=8, split_fractions=[0.5, 0.25, 0.25])
    assert data.n_classes == 6 and data.class_names == list("abcdef") and data.image_shape == (3, 8, 8)
    assert data.captions[5] == "caption 5" and data.class_texts[2] == "class c"
    assert sorted(np.concatenate(list(data.splits.values())).tolist()) == list(range(6))
    with pytest.raises(BenchmarkError, match="no label column 'label'"):
        load_dataset("hf", str(tmp_path / "saved"), image_column="img")


def test_every_registered_loader_takes_download():
    import inspect

    for name in DATASETS.names("*"):
        assert "download" in inspect.signature(DATASETS.get(name).load).parameters, name
