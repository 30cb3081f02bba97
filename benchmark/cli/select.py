"""``select``: choose a config value (fusion, temperature, ...) among finished runs, on validation episodes."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmark.cli.base import Subcommand
from tasks.errors import BenchmarkError

EPILOG = """example (the Matching Networks temperature pilot, benchmark/configs/omniglot_matchingnet_5w1s_temperature_pilot.yaml):
  python run_benchmark.py select runs/matchingnet_temperature/omniglot-seed0-* \\
      --key learner_options.matchingnet.temperature --out results/choices/matchingnet_temperature.json
Each run is one candidate: its value at --key, scored by the validation accuracy of the checkpoint it kept
(run.json). Test rows are never read. Record the choice in the config that uses it (`choices:`)."""


def candidate_scores(run_dirs: list[Path], key: str, method: str | None) -> tuple[dict[str, float], dict]:
    """``{value at key: validation accuracy of the kept checkpoint}`` over ``run_dirs``, and the evidence.

    Raises:
        BenchmarkError: a run without run.json, without validation, with several methods (and no
            ``method``), or two runs with the same value.
    """
    from benchmark.selection import value_at

    scores, evidence = {}, {}
    for run_dir in run_dirs:
        path = run_dir / "run.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise BenchmarkError(f"{path}: cannot read the run record ({err}); give finished run folders") from None
        try:
            value = value_at(record["config"], key)
        except KeyError:
            raise BenchmarkError(f"{path}: its config has no value at {key!r}; check --key") from None
        methods = record.get("methods", {})
        slugs = [method] if method else list(methods)
        if len(slugs) != 1 or slugs[0] not in methods:
            raise BenchmarkError(f"{path}: holds methods {sorted(methods)}; name one with --method")
        accuracy = methods[slugs[0]].get("best_val_accuracy")
        if accuracy is None:
            raise BenchmarkError(f"{path}: {slugs[0]} has no validation accuracy (train.val_every was 0); a choice "
                                 "needs the candidates scored on validation episodes")
        if str(value) in scores:
            raise BenchmarkError(f"two runs have {key}={value!r} ({evidence[str(value)]['run']} and {run_dir}); "
                                 "give one run per candidate")
        scores[str(value)] = float(accuracy)
        evidence[str(value)] = {"run": run_dir.name, "method": slugs[0], "best_step": methods[slugs[0]].get("best_step"),
                                "val_manifest_sha256": record.get("val_manifest_sha256"),
                                "git_commit": record.get("git_commit"), "cpu": record.get("cpu")}
    return scores, evidence


class Select(Subcommand):
    name = "select"
    help = "choose a config value among finished runs by their validation accuracy (never test)"
    epilog = EPILOG

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dirs", nargs="+", help="run folders, one per candidate value")
        parser.add_argument("--key", required=True, help="the dotted config key the runs differ in, e.g. "
                                                         "learner_options.matchingnet.temperature")
        parser.add_argument("--method", help="the method slug to score when a run holds several")
        parser.add_argument("--out", required=True, help="the selection record to write (JSON)")

    def run(self, args: argparse.Namespace) -> int:
        from benchmark.selection import choose

        scores, evidence = candidate_scores([Path(d) for d in args.run_dirs], args.key, args.method)
        selection = choose(args.key, scores, "val", "validation accuracy of the kept checkpoint (run.json "
                                                     "best_val_accuracy)", evidence)
        path = selection.write(args.out)
        for value, score in sorted(selection.scores.items(), key=lambda kv: -kv[1]):
            print(f"{args.key}={value}: validation accuracy {100 * score:.2f}"
                  f"{'  <- chosen' if value == selection.choice else ''}")
        print(f"selection: {path} (record it in the config as choices: [{{key: {args.key}, value: "
              f"{selection.choice}, split: val, evidence: {path}}}])")
        return 0
