"""The command line end to end on a tiny configuration, and its errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.provenance import cpu_model
from tests.conftest import TINY, only_run_dir, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_writes_every_output(tmp_path, capsys):
    code, out, err = run_cli(TINY + ["--out", str(tmp_path)], capsys)
    assert code == 0, err
    run_dir = only_run_dir(tmp_path)
    summary = pd.read_csv(run_dir / "summary.csv")
    for column in ["learner", "fusion", "modalities", "dataset", "n_way", "n_shot", "n_query", "n_episodes",
                   "accuracy", "accuracy_ci95", "nll", "ece"]:
        assert column in summary.columns
    # the default suite (benchmark/configs/default.yaml) at 1 and 5 shots
    methods = set(zip(summary["learner"], summary["modalities"], summary["fusion"]))
    assert methods == {("protonet", "image", "none"), ("protonet", "text", "none"),
                       ("protonet", "image+text", "concat"), ("protonet", "image+text", "attention"),
                       ("am3", "image", "none"), ("maml", "image+text", "attention")}
    assert len(summary) == 12
    assert set(summary["n_shot"]) == {1, 5} and (summary["n_episodes"] == 8).all()
    assert summary["accuracy"].between(0, 100).all()
    assert (run_dir / "summary.md").read_text().startswith("| learner")
    record = json.loads((run_dir / "run.json").read_text())
    for key in ("config", "seeds", "manifests", "git_commit", "packages", "device", "wall_time_s",
                "peak_memory_mb", "status"):
        assert key in record
    assert record["status"] == "finished" and record["packages"]["torch"]
    assert record["cpu"] == cpu_model() != ""  # every figure names its CPU model
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    assert {r["manifest_sha256"] for r in rows} == {m["sha256"] for m in record["manifests"].values()}
    assert (run_dir / "comparison.csv").exists()
    assert "accuracy % (95% CI)" in out  # the one-screen table


def test_same_seed_gives_identical_numbers(tmp_path, capsys):
    args = TINY + ["--modalities", "image+text", "--fusions", "attention", "--shots", "1"]
    assert run_cli(args + ["--out", str(tmp_path / "a")], capsys)[0] == 0
    assert run_cli(args + ["--out", str(tmp_path / "b")], capsys)[0] == 0
    a = (only_run_dir(tmp_path / "a") / "rows.jsonl").read_text()
    b = (only_run_dir(tmp_path / "b") / "rows.jsonl").read_text()
    assert a == b
    assert run_cli(args + ["--seed", "1", "--out", str(tmp_path / "c")], capsys)[0] == 0
    assert (only_run_dir(tmp_path / "c") / "rows.jsonl").read_text() != a


def test_query_without_text_runs_with_attention(tmp_path, capsys):
    args = TINY + ["--modalities", "image+text", "--fusions", "attention", "--shots", "1",
                   "--query-modalities", "image", "--out", str(tmp_path)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    summary = pd.read_csv(only_run_dir(tmp_path) / "summary.csv")
    assert summary["setting"].tolist() == ["support=image+text,query=image"]


def test_methods_that_cannot_run_in_the_setting_are_skipped_and_recorded(tmp_path, capsys):
    args = TINY + ["--shots", "1", "--query-modalities", "image", "--out", str(tmp_path)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    run_dir = only_run_dir(tmp_path)
    summary = pd.read_csv(run_dir / "summary.csv")
    assert set(zip(summary["learner"], summary["modalities"], summary["fusion"])) == {
        ("protonet", "image", "none"), ("protonet", "image+text", "attention"), ("am3", "image", "none"),
        ("maml", "image+text", "attention")}
    skipped = json.loads((run_dir / "run.json").read_text())["skipped"]
    assert set(skipped) == {"protonet[text]", "protonet[image+text/concat]"}


def test_explicit_methods_and_per_learner_training(tmp_path, capsys):
    args = TINY + ["--shots", "1", "--set", "methods=[protonet:image, maml:image]",
                   "--set", "train_overrides.maml.way=3", "--set", "learner_options.maml.head=zero",  # any way
                   "--out", str(tmp_path)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    summary = pd.read_csv(only_run_dir(tmp_path) / "summary.csv")
    assert sorted(summary["learner"]) == ["maml", "protonet"]
    record = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
    assert record["config"]["train_overrides"]["maml"]["way"] == 3


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return str(path)


def _not_a_dir(tmp_path: Path) -> str:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    return str(blocker / "out")


BAD_INPUTS = [
    ("n_way above the classes of a split", ["--ways", "11"], "--ways=11 is larger than the 10 classes"),
    ("K+Q above the items of a class", ["--shots", "10", "--queries", "15"], "exceeds the items"),
    ("unknown learner", ["--learners", "protonett"], "unknown learner 'protonett'. Did you mean 'protonet'"),
    ("unknown fusion", ["--fusions", "atention"], "unknown fusion 'atention'. Did you mean 'attention'"),
    ("unknown dataset", ["--dataset", "shape"], "unknown dataset 'shape'. Did you mean 'shapes'"),
    ("unknown config key", lambda p: ["--config", _yaml(p, "train:\n  wya: 5\n")],
     "unknown key 'wya'. Did you mean 'way'"),
    ("wrong type", lambda p: ["--config", _yaml(p, "seed: abc\n")], "seed: expected an integer"),
    ("unknown fusion option", ["--set", "fusion_options.gated.hiden=4"],
     r"fusion_options.gated \(fusion 'gated'\): unknown key 'hiden'. Did you mean 'hidden'"),
    ("unknown backbone option", ["--set", "backbone_options.hiddn=4"],
     r"backbone_options \(backbone 'conv4'\): unknown key 'hiddn'. Did you mean 'hidden'"),
    ("unknown text encoder option", ["--set", "text_encoder_options.dims=4"],
     r"text_encoder_options \(text encoder 'bow'\): unknown key 'dims'. Did you mean 'dim'"),
    ("unknown dataset option", ["--set", "dataset_options.image_sise=4"],
     r"dataset_options \(dataset 'shapes'\): unknown key 'image_sise'. Did you mean 'image_size'"),
    ("wrong type of a learner option", ["--set", "learner_options.maml.train_steps=two"],
     r"learner_options.maml \(learner 'maml'\): train_steps: expected an integer"),
    ("wrong type of a fusion option", ["--set", "fusion_options.attention.dim=wide"],
     r"fusion_options.attention \(fusion 'attention'\): dim: expected an integer"),
    ("out of range", ["--set", "train.shot=0"], "train.shot=0 is out of range"),
    ("negative learning rate", ["--set", "train.lr=-1"], "train.lr=-1.0 is out of range"),
    ("unknown compile backend", ["--set", "train.compile=foo"], "train.compile='foo' is not a torch.compile backend"),
    ("malformed method", ["--set", "methods=[protonet]"], "is not 'learner:modalities\\[:fusion\\]'"),
    ("validation settings per learner", ["--set", "train_overrides.maml.val_way=3"],
     "cannot differ per learner"),
    ("unwritable --out", lambda p: ["--out", _not_a_dir(p)], "cannot write to the output directory"),
    ("concat without query text", ["--modalities", "image+text", "--fusions", "concat", "--query-modalities",
                                   "image"], "query side shows only image.*fusion 'concat'"),
    ("text-only learner without query text", ["--modalities", "text", "--query-modalities", "image"],
     "the query side shows image but this model uses only text"),
]


@pytest.mark.parametrize("name,extra,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gives_a_clear_error_and_exit_2(tmp_path, capsys, name, extra, message):
    import re

    extra = extra(tmp_path) if callable(extra) else extra
    args = TINY + ["--out", str(tmp_path / "runs")] + extra
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert re.search(message, err), err
    assert err.startswith("error: ") and "Traceback" not in err


def test_entry_point_ls_and_help():
    ls = subprocess.run([sys.executable, "run_benchmark.py", "ls", "learners"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    assert ls.returncode == 0 and "protonet" in ls.stdout
    fusions = subprocess.run([sys.executable, "run_benchmark.py", "ls", "fusions", "a*"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert fusions.stdout.split()[0] == "attention"
    bad = subprocess.run([sys.executable, "run_benchmark.py", "--learners", "nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown learner 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_training_without_validation_keeps_the_last_step(tmp_path, capsys):
    """``train.val_every=0``: no validation manifest is built and the final state is the model."""
    args = TINY + ["--learners", "protonet", "--modalities", "image", "--shots", "1", "--set", "train.val_every=0",
                   "--set", "train.checkpoint_every=0", "--out", str(tmp_path)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    run_dir = only_run_dir(tmp_path)
    record = json.loads((run_dir / "run.json").read_text())
    method = next(iter(record["methods"].values()))
    assert record["val_manifest_sha256"] is None
    assert method["val"] == [] and method["best_step"] == 3
    assert not any(p.name.startswith("shapes-val") for p in (tmp_path / "manifests").iterdir())


def test_cli_package_subcommands_and_entry_points(capsys):
    """`python -m benchmark` works; abbreviations are refused; --debug/--plugin go before or after the
    subcommand; perf's suite is imported only when `perf` is parsed; a new subcommand is one list entry."""
    env_code = "import sys; from benchmark.cli import main; main(['ls', 'fusions', 'con*']); " \
               "print(sorted(m for m in sys.modules if m.startswith('benchmark.perf')))"
    result = subprocess.run([sys.executable, "-c", env_code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "concat" in result.stdout and result.stdout.strip().endswith("[]")
    module = subprocess.run([sys.executable, "-m", "benchmark", "ls", "learners", "proto*", "--debug"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert module.returncode == 0 and module.stdout.startswith("protonet"), module.stderr
    for argv in (["--learn", "protonet"], ["run", "--learn", "protonet"], ["ls", "learners", "--deb"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "unrecognized arguments: --" in capsys.readouterr().err

    from benchmark import cli
    from benchmark.cli.base import Subcommand

    class Hello(Subcommand):
        name, help = "hello", "say hello"

        def add_arguments(self, parser):
            parser.add_argument("--who", default="world")

        def run(self, args):
            print(f"hello {args.who}")
            return 0

    cli.COMMANDS.append(Hello())
    try:
        assert main(["hello", "--who", "you"]) == 0 and capsys.readouterr().out == "hello you\n"
    finally:
        cli.COMMANDS.pop()
