"""``run --seeds 0,1,2``: one config over several seeds, each seed a run of its own, then tables over seeds.

Seeds run one after another; a seed whose run folder says ``finished`` is skipped, so rerunning the same
command after an interrupt continues with the unfinished seed (which itself resumes from its finished
methods and last training checkpoint). The tables over all seeds (means over seeds with the across-seed
95% CI beside the per-episode CI, paired comparisons per seed and combined) go to
``<out>/<dataset>-seeds<a>-<b>-...-<config>/``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from benchmark.config import ExperimentConfig, merge, to_dict
from benchmark.tables import config_key, read_run_record
from benchmark.tablewrite import Tables, write_tables
from tasks.errors import BenchmarkError

log = logging.getLogger(__name__)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive) -> distinct seeds in the given order."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            first, sep, last = part.partition("-")
            seeds += list(range(int(first), int(last) + 1)) if sep and first else [int(part)]
    except ValueError:
        raise BenchmarkError(f"--seeds {text!r}: expected seeds such as 0,1,2 or 0-4") from None
    if not seeds or any(s < 0 for s in seeds):
        raise BenchmarkError(f"--seeds {text!r}: expected non-negative seeds such as 0,1,2 or 0-4")
    return list(dict.fromkeys(seeds))


def seeds_folder(cfg: ExperimentConfig, seeds: list[int]) -> Path:
    """Where the tables over ``seeds`` of ``cfg`` go."""
    return Path(cfg.out) / f"{cfg.dataset}-seeds{'-'.join(map(str, seeds))}-{config_key(to_dict(cfg))}"


def run_seeds(cfg: ExperimentConfig, seeds: list[int], resume: bool = True) -> tuple[list[Path], Tables, Path]:
    """Run ``cfg`` once per seed (skipping finished seeds when ``resume``) and write the tables over them.

    Returns:
        The run folders (in seed order), the tables over them and the folder they were written to.
    """
    from benchmark.rowcheck import check_rows
    from benchmark.runner import Benchmark

    run_dirs = []
    for i, seed in enumerate(seeds, 1):
        bench = Benchmark(merge(cfg, {"seed": seed}, "--seeds"), resume=resume)
        if resume and read_run_record(bench.run_dir).get("status") == "finished" and check_rows(bench.run_dir).ok:
            log.info("seed %d (%d/%d): finished in %s, skipped", seed, i, len(seeds), bench.run_dir)
        else:
            log.info("seed %d (%d/%d): run %s", seed, i, len(seeds), bench.run_id)
            bench.run()
        run_dirs.append(bench.run_dir)
    out = seeds_folder(cfg, seeds)
    return run_dirs, write_tables(run_dirs, out), out
