#!/usr/bin/env python
"""Wall time of one sweep with the local executor and with Ray workers, in the same invocation.

Usage::

    python scripts/measure_sweep.py [--steps 300] [--num-cpus 2] [--repeats 1] [--out runs/measure-sweep]

It writes a 4-cell sweep (shapes; ProtoNet image and text x seeds 0, 1; one thread per cell),
generates the dataset once, then runs the sweep into fresh folders alternately with
``--executor local`` and ``--executor ray --num-cpus N`` (a local Ray instance started by the
command, so its start-up is included), each as its own ``run_benchmark.py sweep`` process, and
prints JSON: the wall times, the ratio ray / local, the CPU model and the load average before
and after (the machine may be shared). It also checks that both wrote identical rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = """\
config:
  backbone_options: {{hidden: 32}}
  train: {{way: 20, shot: 5, query: 5, episodes: {steps}, val_every: {steps}, val_episodes: 20}}
  eval: {{ways: [5], episodes: 100}}
  threads: 1
methods: [protonet:image, protonet:text]
shots: [1]
seeds: [0, 1]
"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def sweep(file: Path, out: Path, executor: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "run_benchmark.py", "sweep", str(file), "--out", str(out), *executor],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return round(time.perf_counter() - start, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per cell")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="runs/measure-sweep")
    args = parser.parse_args()
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    file = root / "sweep.yaml"
    file.write_text(SWEEP.format(steps=args.steps))
    warm = root / "warm.yaml"  # generate the dataset (and its cache) before timing anything
    warm.write_text(SWEEP.format(steps=1).replace("seeds: [0, 1]", "seeds: [0]").replace(", protonet:text", ""))
    sweep(warm, root / "warm", [])
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {"local": [], "ray": []}
    for _ in range(args.repeats):
        times["local"].append(sweep(file, root / "local", []))
        times["ray"].append(sweep(file, root / "ray", ["--executor", "ray", "--num-cpus", str(args.num_cpus)]))
    same = (root / "local" / "rows.jsonl").read_bytes() == (root / "ray" / "rows.jsonl").read_bytes()
    cells = {e: [c["wall_time_s"] for c in json.loads((root / e / "sweep.json").read_text())["cells"]]
             for e in times}
    print(json.dumps({
        "cells": 4, "steps_per_cell": args.steps, "ray_num_cpus": args.num_cpus, "wall_s": times,
        "cell_wall_s": cells, "ratio_ray_over_local": round(min(times["ray"]) / min(times["local"]), 3),
        "identical_rows": same, "cpu": cpu_model(), "cores": os.cpu_count(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
