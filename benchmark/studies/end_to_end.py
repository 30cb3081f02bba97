"""The gate and missing class text of class-text learners trained end to end (issue 16, steps 3-5).

The frozen-feature study (:mod:`benchmark.studies.miniimagenet_text`) tracks AM3's gate and the
missing-text curve on a fixed backbone. This module measures the same on a harness run whose learners
trained their backbone too (``benchmark/configs/miniimagenet_text_end_to_end.yaml``), from the run's
saved models:

* every AM3 model: its gate ``lambda`` (1 = image prototype) on every class of the training,
  validation and test splits, and the geometry of its two prototypes
  (:func:`benchmark.studies.geometry.prototype_geometry`) on features from its own trained backbone;
* every model that reads class text (AM3, ``classfusion``): accuracy on the run's own test episodes
  (the same manifests as its rows) with class text for a fraction p of the test classes
  (:func:`benchmark.studies.classtext.evaluate_missing_text`), for each of the run's shots;
* the gate *during* training, when the run tracked it (``train.gate_every``, :mod:`benchmark.gates`):
  lambda per split and the text-only / image-only separation of each split's classes at every
  recorded step (``gates_training.csv``, and a 1-2-5 selection of steps in ``gates_training.md``).

Run::

    python -m benchmark.studies.end_to_end --run runs/miniimagenet_text_e2e/<run_id> \\
        --data-root ../shared/data --out results/miniimagenet_text/end_to_end

With ``--control <run>`` (``benchmark/configs/miniimagenet_text_end_to_end_control.yaml``, the same
classfusion trained without class text on the same episodes) it also writes ``control.csv``/``.md``.
It writes ``end_to_end.json`` (everything), ``gates.md`` and ``missing_text.csv``/``.md`` (p = 1 must equal
the run's own accuracy, ``run_accuracy``: a check that the models and episodes are the run's).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.results import atomic_write_text, read_jsonl, read_rows, rows_file
from benchmark.stats import mean_ci95, paired_test
from benchmark.studies import classtext
from benchmark.tablewrite import to_markdown
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@torch.no_grad()
def image_features(learner, loader, n_items: int, batch_size: int = 500) -> torch.Tensor:
    """``[n_items, D]`` image embeddings of every item through ``learner``'s own (trained) image encoder."""
    out = []
    for start in range(0, n_items, batch_size):
        items = torch.arange(start, min(start + batch_size, n_items))
        out.append(learner.encoder.encoders["image"](loader.side(items, ("image",))["image"]).float())
    return torch.cat(out)


@torch.no_grad()
def am3_gates(learner, loader, dataset) -> list[dict]:
    """Per split: ``lambda`` of every class and :func:`prototype_geometry` on the learner's own features."""
    from benchmark.studies.geometry import prototype_geometry

    features = image_features(learner, loader, len(dataset.labels))
    labels = torch.as_tensor(np.asarray(dataset.labels))
    class_text = loader.class_text
    rows = []
    for split in SPLITS:
        classes = list(dataset.split_classes(split))
        _, gate = learner.mixing(class_text[torch.as_tensor(classes)])
        gate = gate.flatten()
        rows.append({"split": split, "gate_mean": float(gate.mean()), "gate_min": float(gate.min()),
                     "gate_max": float(gate.max()), "gates": [float(f"{g:.4g}") for g in gate.tolist()],  # 4 significant digits: a collapsed gate is ~1e-7
                     **prototype_geometry(learner.mixing, features, labels, class_text, classes)})
    return rows


def run_manifests(run_dir: Path, dataset) -> dict[int, object]:
    """``{shot: manifest}`` of the run's test episodes, regenerated from its manifest seed and checked
    against the sha256 its ``run.json`` records."""
    from tasks.sampler import EpisodeManifest

    record = json.loads((run_dir / "run.json").read_text())
    evaluation, manifests = record["config"]["eval"], {}
    for cell, recorded in record["manifests"].items():
        way, shot = (int(x) for x in cell.rstrip("s").split("w"))
        manifest = EpisodeManifest.generate(dataset, "test", way, shot, int(evaluation.get("query", 15)),
                                            int(evaluation["episodes"]), record["seeds"]["manifest"])
        if manifest.sha256 != recorded["sha256"]:
            raise BenchmarkError(f"{run_dir}: the {cell} test episodes regenerated from the run's seed are not "
                                 "the run's (sha256 differs); was the dataset changed?")
        manifests[shot] = manifest
    return manifests


def analyse(run_dir: Path, data_root: str, fractions: list[float], seed: int = 0) -> dict:
    """Gates (AM3) and missing-text accuracies (every class-text model) of the models of ``run_dir``."""
    from benchmark.predict import make_loader
    from benchmark.savedmodel import load_learner
    from benchmark.studies.classtext import evaluate_missing_text
    from tasks.datasets import load_dataset

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file() or not (run_dir / "rows.jsonl").is_file():
        raise BenchmarkError(f"{run_dir} holds no run.json and rows.jsonl: give a run folder written by "
                             "`run_benchmark.py run`")
    record = json.loads((run_dir / "run.json").read_text())
    options = {k: v for k, v in record["config"].get("dataset_options", {}).items() if k != "download"}
    dataset = load_dataset(record["config"]["dataset"], data_root or None, **options)
    manifests = run_manifests(run_dir, dataset)
    device = torch.device("cpu")
    out = {"run": str(run_dir), "run_id": record.get("run_id"), "git_commit_of_run": record.get("git_commit"),
           "fractions": fractions, "models": {}}
    for path in sorted((run_dir / "checkpoints").glob("*.pt")):
        if path.name.endswith(".train.pt"):
            continue
        learner = load_learner(path)
        if not hasattr(learner, "set_class_text_available"):
            continue  # reads no class text
        loader = make_loader(learner, dataset, device)
        model = {"learner": learner.benchmark_info.meta["learner"], "missing_text": {}}
        if hasattr(learner, "mixing"):
            model["gates"] = am3_gates(learner, loader, dataset)
        for shot, manifest in manifests.items():
            accuracies = evaluate_missing_text(learner, loader, manifest, dataset, fractions, device, seed)
            model["missing_text"][str(shot)] = {str(p): [float(v) for v in values] for p, values in accuracies.items()}
        out["models"][path.stem] = model
        log.info("%s: done", path.stem)
    out["training_gates"] = training_gates(run_dir)
    return out


def training_gates(run_dir: Path) -> dict[str, list[dict]]:
    """``{slug: records}`` of the gates a run tracked while training (``<run>/gates/<slug>.jsonl[.gz]``), without
    the per-class values, one record per (step, split): a resumed run records the steps after its last
    checkpoint again, and the later record wins."""
    tracked = {}
    for path in sorted((run_dir / "gates").glob("*.jsonl*")):  # .jsonl, or .jsonl.gz as kept in results/
        if path.suffix not in (".jsonl", ".gz"):
            continue
        records = {}
        for record in read_jsonl(path):
            record.pop("gates", None)
            records[(record["step"], record["split"])] = record
        order = sorted(records, key=lambda k: (k[0], SPLITS.index(k[1])))
        tracked[path.name.removesuffix(".gz").removesuffix(".jsonl")] = [records[k] for k in order]
    return tracked


def training_gate_tables(result: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tracked gates, long (one row per model, step and split) and wide for reading (one row per model
    and step: lambda and the text-only / image-only separation, in %, of each split, the text-only /
    image-only loss on training classes and the image side's share of a mixed prototype's norm,
    ``lambda |p| / (lambda |p| + (1 - lambda) |g(t)|)``, on training classes; the steps recorded nearest to
    0, 10, 20, 50, 100, 200, 500, ... and the last)."""
    long = pd.DataFrame([{"model": name, **r} for name, records in result.get("training_gates", {}).items()
                         for r in records])
    if long.empty:
        return long, long
    wide = []
    for name, group in long.groupby("model", sort=False):
        steps = sorted(group["step"].unique())
        marks = [m * 10 ** e for e in range(8) for m in (1, 2, 5)]
        keep = {steps[0], steps[-1]} | {min(steps, key=lambda s: abs(s - m)) for m in marks if m <= steps[-1]}
        for step in sorted(keep):
            at = group[group["step"] == step].set_index("split")
            row = {"model": name, "step": int(step)}
            for split in SPLITS:
                if split in at.index:
                    row[f"lambda_{split}"] = float(f"{at.loc[split, 'gate_mean']:.3g}")
            for split in SPLITS:
                if split in at.index:
                    row[f"text_sep_{split}"] = round(100 * at.loc[split, "text_accuracy"], 1)
                    row[f"image_sep_{split}"] = round(100 * at.loc[split, "image_accuracy"], 1)
            if "train" in at.index and "text_loss" in at.columns:  # recorded since the loss was added
                row["text_loss_train"] = float(f"{at.loc['train', 'text_loss']:.3g}")
                row["image_loss_train"] = float(f"{at.loc['train', 'image_loss']:.3g}")
            if "train" in at.index and "image_norm" in at.columns and not pd.isna(at.loc["train", "image_norm"]):
                image = at.loc["train", "gate_mean"] * at.loc["train", "image_norm"]
                text = (1 - at.loc["train", "gate_mean"]) * at.loc["train", "text_norm"]
                row["image_share_train"] = float(f"{image / (image + text):.3g}")
            wide.append(row)
    return long, pd.DataFrame(wide)


def write_training_gate_tables(out: Path, result: dict) -> pd.DataFrame:
    """``gates_training.csv`` (long) and ``gates_training.md`` (readable) of :func:`training_gate_tables`,
    when the run tracked any; returns the readable table (empty: nothing written)."""
    during, readable = training_gate_tables(result)
    if not during.empty:
        atomic_write_text(out / "gates_training.csv", during.to_csv(index=False))
        atomic_write_text(out / "gates_training.md", to_markdown(readable) + "\n")
    return readable


def baseline_accuracies(folder: Path, learner: str = "protonet") -> dict[int, np.ndarray]:
    """``{shot: per-episode accuracy}`` of ``learner`` on images in the run's ``rows.jsonl`` (or ``.gz``)."""
    rows = read_rows(rows_file(folder))
    rows = rows[(rows["learner"] == learner) & (rows["metric"] == "accuracy") & (rows["modalities"] == "image")
                & (rows["fusion"] == "none")]
    return {int(shot): g.sort_values("episode")["value"].to_numpy() for shot, g in rows.groupby("n_shot")}


def missing_text_table(result: dict, own: pd.DataFrame, baseline: dict[int, np.ndarray] | None = None) -> pd.DataFrame:
    """Accuracy (%) per model, shot and p, its paired difference to p = 1, the run's own accuracy and,
    given ``baseline`` (:func:`baseline_accuracies`), the paired difference to the run's ProtoNet."""
    rows = []
    for name, model in result["models"].items():
        for shot, by_p in model["missing_text"].items():
            full = np.asarray(by_p[str(1.0)]) if str(1.0) in by_p else None
            mine = own[(own["slug"] == name) & (own["n_shot"] == int(shot))]["accuracy"]
            for p, values in by_p.items():
                mean, ci = mean_ci95(np.asarray(values))
                row = {"model": name, "n_shot": int(shot), "text_fraction": float(p), "accuracy": round(100 * mean, 2),
                       "ci95": round(100 * ci, 2), "run_accuracy": float(mine.iloc[0]) if len(mine) else np.nan}
                if full is not None and float(p) != 1.0:
                    test = paired_test(np.asarray(values), full)
                    row.update(difference_to_all_text=round(100 * test.mean_difference, 2),
                               difference_ci95=round(100 * test.ci95, 2), p_value=float(f"{test.p_value:.3g}"))
                if baseline is not None and int(shot) in baseline:
                    test = paired_test(np.asarray(values), baseline[int(shot)])
                    row.update(vs_protonet=round(100 * test.mean_difference, 2),
                               vs_protonet_ci95=round(100 * test.ci95, 2),
                               vs_protonet_p=float(f"{test.p_value:.3g}"))
                rows.append(row)
    return pd.DataFrame(rows)


def gate_table(result: dict) -> pd.DataFrame:
    keep = ["gate_mean", "gate_min", "gate_max", "image_feature_norm", "image_1shot_prototype_distance_between_classes",
            "image_class_mean_distance_between_classes", "text_prototype_norm",
            "text_prototype_distance_between_classes", "text_prototype_distance_to_its_class_mean"]
    return pd.DataFrame([{"model": name, "split": r["split"], **{k: float(f"{r[k]:.4g}") for k in keep}}
                         for name, model in result["models"].items() for r in model.get("gates", [])])


def own_accuracies(run_dir: Path) -> pd.DataFrame:
    """The run's own summary: ``slug`` (checkpoint stem), ``n_shot``, ``accuracy``."""
    summary = pd.read_csv(run_dir / "summary.csv")
    summary["slug"] = [f"{learner}-{modalities}-{fusion}" for learner, modalities, fusion in
                       zip(summary["learner"], summary["modalities"], summary["fusion"])]
    return summary


def check_same_episodes(run: Path, other: Path, role: str) -> None:
    """Raise unless every test setting the two runs share has the same manifest sha256."""
    ours, theirs = (json.loads((folder / "run.json").read_text())["manifests"] for folder in (run, other))
    for cell, recorded in ours.items():
        if cell in theirs and theirs[cell]["sha256"] != recorded["sha256"]:
            raise BenchmarkError(f"{role} {other}: its {cell} test episodes differ from the run's; train it "
                                 "with the same seed and dataset")


def control_table(result: dict, run: Path, control: Path) -> pd.DataFrame:
    """The image-only control run (``miniimagenet_text_end_to_end_control.yaml``: classfusion trained
    without class text) paired with the run's models on the same test episodes: what training with
    class text adds at an equal architecture and budget.

    Raises:
        BenchmarkError: the control's test episodes are not the run's (manifest sha256 differ).
    """
    check_same_episodes(run, control, "control")
    controls = baseline_accuracies(control, learner="classfusion")
    protonet = baseline_accuracies(run)
    fusion = result["models"].get("classfusion-image-none", {}).get("missing_text", {})
    rows = []
    for shot, control_values in sorted(controls.items()):
        by_p = fusion.get(str(shot), {})
        pairs = [("control (no class text in training or test)", control_values, "protonet", protonet.get(shot))]
        for p, label in (("1.0", "all class text at test"), ("0.0", "no class text at test")):
            if p in by_p:
                pairs.append((f"classfusion trained with text, {label}", np.asarray(by_p[p]), "control",
                              control_values))
        for name, values, against, reference in pairs:
            if reference is None:
                continue
            mean, ci = mean_ci95(values)
            test = paired_test(values, reference)
            rows.append({"n_shot": shot, "model": name, "accuracy": round(100 * mean, 2), "ci95": round(100 * ci, 2),
                         "against": against, "difference": round(100 * test.mean_difference, 2),
                         "difference_ci95": round(100 * test.ci95, 2), "p_value": float(f"{test.p_value:.3g}")})
    return pd.DataFrame(rows)


def write_tables(out: Path, result: dict, control: Path | None = None,
                 baseline_run: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``gates.md`` and ``missing_text.csv``/``.md`` from ``result`` (``end_to_end.json``); the run's own
    accuracies come from its ``summary.csv``, in the run folder or (a committed copy) in ``out``."""
    gates = gate_table(result)
    run = Path(result["run"])
    run = run if (run / "summary.csv").is_file() else out  # the run folder, or a committed copy of its files
    if baseline_run is not None:
        check_same_episodes(run, baseline_run, "--baseline-run")
    missing = missing_text_table(result, own_accuracies(run), baseline_accuracies(baseline_run or run))
    atomic_write_text(out / "gates.md", to_markdown(gates) + "\n" if not gates.empty else "(no AM3 model)\n")
    atomic_write_text(out / "missing_text.csv", missing.to_csv(index=False))
    atomic_write_text(out / "missing_text.md", to_markdown(missing) + "\n")
    if result.get("models"):
        classtext.write_missing_text_rows(out, result, run)
    write_training_gate_tables(out, result)
    if control is not None:
        table = control_table(result, run, control)
        atomic_write_text(out / "control.csv", table.to_csv(index=False))
        atomic_write_text(out / "control.md", to_markdown(table) + "\n")
    return gates, missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.studies.end_to_end",
                                description="gates and missing class text of class-text learners trained end to end")
    p.add_argument("--run", help="a run folder of benchmark/configs/miniimagenet_text_end_to_end.yaml")
    p.add_argument("--data-root", help="folder holding the run's dataset")
    p.add_argument("--out", default="results/miniimagenet_text/end_to_end")
    p.add_argument("--tables-only", action="store_true",
                   help="only rewrite the tables of --out from its end_to_end.json (and the run's summary.csv)")
    p.add_argument("--training-gates-only", action="store_true",
                   help="only table the gates --run tracked while training (<run>/gates/, written with "
                        "train.gate_every; the run need not have finished): gates_training.csv/.md")
    p.add_argument("--control", help="the run folder of miniimagenet_text_end_to_end_control.yaml (same seed): "
                                     "writes control.csv/.md")
    p.add_argument("--baseline-run", help="the run folder whose ProtoNet the models are paired with (default: the "
                                          "run itself); its test episodes must be the run's")
    p.add_argument("--text-fractions", default="1,0.75,0.5,0.25,0")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    try:
        control = Path(args.control) if args.control else None
        baseline_run = Path(args.baseline_run) if args.baseline_run else None
        for role, folder in (("--control", control), ("--baseline-run", baseline_run)):
            if folder is not None and not (folder / "run.json").is_file():
                raise BenchmarkError(f"{role} {folder} holds no run.json: give a run folder")
        if args.training_gates_only:
            if not args.run:
                raise BenchmarkError("--training-gates-only needs --run RUN_DIR")
            result = {"run": args.run, "training_gates": training_gates(Path(args.run))}
            if not result["training_gates"]:
                raise BenchmarkError(f"{Path(args.run) / 'gates'} holds no tracked gates: train with "
                                     "train.gate_every > 0 (an AM3 learner with class text)")
            out.mkdir(parents=True, exist_ok=True)
            print(to_markdown(write_training_gate_tables(out, result)))
            return 0
        if args.tables_only:
            if not (out / "end_to_end.json").is_file():
                raise BenchmarkError(f"{out / 'end_to_end.json'} does not exist: run the analysis first (--run)")
            result = json.loads((out / "end_to_end.json").read_text())
        else:
            if not args.run or args.data_root is None:
                raise BenchmarkError("give --run RUN_DIR and --data-root DIR (or --tables-only)")
            if args.threads:
                torch.set_num_threads(args.threads)
            try:
                fractions = [float(x) for x in args.text_fractions.split(",") if x.strip()]
            except ValueError:
                raise BenchmarkError(f"--text-fractions {args.text_fractions!r}: expected numbers in [0, 1]") from None
            if not fractions or any(not 0 <= f <= 1 for f in fractions):
                raise BenchmarkError(f"--text-fractions {args.text_fractions!r}: expected numbers in [0, 1]")
            result = analyse(Path(args.run), args.data_root, fractions)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "end_to_end.json", json.dumps(result) + "\n")
        gates, missing = write_tables(out, result, control, baseline_run)
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(to_markdown(gates) if not gates.empty else "(no AM3 model)")
    print(to_markdown(missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
