"""A learner from a module outside the packages, registered with ``--plugin`` and run through the CLI.

The module is the worked example of ``docs/adding-a-learner.md``, so the guide is tested too.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def guide_example() -> str:
    text = (ROOT / "docs" / "adding-a-learner.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "run_benchmark.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_plugin_learner_runs_through_the_cli(tmp_path):
    (tmp_path / "my_learner.py").write_text(guide_example())
    out = tmp_path / "runs"
    result = cli(
        "--plugin", "my_learner.py", "run", "--learners", "cosine_centroid", "--modalities", "image,image+text",
        "--fusions", "late", "--train-episodes", "2", "--test-episodes", "2", "--shots", "1", "--queries", "2",
        "--threads", "1", "--out", str(out), "--set", "dataset_options={n_classes: 40, items_per_class: 20}",
        "--set", "train.way=5", "--set", "train.val_episodes=2", "--set", "learner_options.cosine_centroid.scale=5",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cosine_centroid" in result.stdout
    (run_json,) = out.glob("*/run.json")
    record = json.loads(run_json.read_text())
    assert record["status"] == "finished"
    assert record["config"]["learner_options"]["cosine_centroid"] == {"scale": 5}
    assert set(record["methods"]) == {"cosine_centroid-image-none", "cosine_centroid-image+text-late"}


def test_unknown_plugin_is_a_clear_error(tmp_path):
    result = cli("--plugin", "no_such_module_xyz", "ls", "learners", cwd=tmp_path)
    assert result.returncode == 2 and "no_such_module_xyz" in result.stderr
