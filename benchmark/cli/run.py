"""``run`` (the default subcommand): train and evaluate a suite of methods.

All work is done by :class:`benchmark.runner.Benchmark`; this module only turns flags into an
:class:`~benchmark.config.ExperimentConfig`.
"""
from __future__ import annotations

import argparse
import logging
import signal
import time

from benchmark.cli.base import Subcommand
from tasks.errors import BenchmarkError

log = logging.getLogger("benchmark")

EXAMPLES = """\
examples:
  python run_benchmark.py                      # default suite on the built-in 'shapes' dataset
  python run_benchmark.py --shots 1 --test-episodes 200 --train-episodes 100
  python run_benchmark.py --learners protonet --modalities image+text --fusions attention \\
      --query-modalities image                 # queries without text
  python run_benchmark.py --config benchmark/configs/omniglot_protonet_1shot.yaml --data-root ../shared/data \\
      --set train.lr=0.0005
  python run_benchmark.py ls learners          # what is registered ('ls fusions', 'ls datasets', ...)

An interrupted run continues where it stopped when the same command is run again
(finished methods are kept, training resumes from its last checkpoint); --no-resume starts over.
"""


def _csv(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    return parse


class Run(Subcommand):
    name = "run"
    help = "train and evaluate (the default command)"
    epilog = EXAMPLES

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--config", help="YAML experiment file; flags override it")
        add("--dataset", help="dataset name (default: shapes, built in)")
        add("--data-root", help="folder holding the dataset in its official layout")
        add("--download", action="store_true",
            help="fetch the dataset into --data-root if it is missing (where a download exists)")
        add("--learners", type=_csv(str), help="comma-separated learner names")
        add("--modalities", type=_csv(str), help="e.g. image,text,image+text")
        add("--fusions", type=_csv(str), help="fusions for multimodal settings, e.g. concat,attention")
        add("--text-encoder", help="bow (trainable) or minilm (frozen all-MiniLM-L6-v2)")
        add("--query-modalities", help="what queries show: image+text (default) or image")
        add("--ways", type=_csv(int), help="test ways, e.g. 5,20")
        add("--shots", type=_csv(int), help="test shots, e.g. 1,5")
        add("--queries", type=int, help="test queries per class (default 15)")
        add("--train-episodes", type=int, help="meta-training steps per method")
        add("--test-episodes", type=int, help="episodes per test manifest (default 600)")
        add("--seed", type=int, help="seed for episodes and initialisation (default 0)")
        add("--out", help="output directory; each run writes a subfolder (default: runs)")
        add("--device", help="cpu, cuda, cuda:N")
        add("--threads", type=int, help="torch CPU threads")
        add("--resume", action=argparse.BooleanOptionalAction, default=True,
            help="continue an unfinished run of the same config in --out from its finished methods and "
                 "last training checkpoint (default); --no-resume moves earlier results of this run "
                 "aside (to <run>/replaced-<time>/) and starts over")
        add("--deterministic", action="store_true",
            help="use deterministic algorithms only (torch.use_deterministic_algorithms, "
                 "CUBLAS_WORKSPACE_CONFIG=:4096:8): bit-identical GPU reruns, somewhat slower; "
                 "CPU runs are deterministic without it")
        add("--set", action="append", default=[], metavar="KEY=VALUE",
            help="override any config key, e.g. train.lr=0.0005 (value parsed as YAML)")

    def run(self, args: argparse.Namespace) -> int:
        from benchmark.results import format_table
        from benchmark.runner import Benchmark

        start = time.perf_counter()
        if args.deterministic:
            set_deterministic()
            log.info("--deterministic: deterministic kernels only. The cost is speed on GPU (cuDNN autotuning off, "
                     "slower deterministic kernels; not yet measured for this suite: compare `perf --device cuda` "
                     "with and without) and an error naming any operation that has no deterministic kernel")
        from benchmark import distributed

        cfg = config_from_args(args)
        if not distributed.init_from_env(cfg.device).is_main:  # under torchrun: ranks > 0 train, write nothing
            logging.getLogger().setLevel(logging.WARNING)
            distributed.follow(Benchmark(cfg, resume=args.resume))
            distributed.shutdown()
            return 0
        bench = Benchmark(cfg, resume=args.resume)
        log.info("run %s: %d methods, writing to %s", bench.run_id, len(bench.methods), bench.run_dir)
        if bench.cfg.note:
            log.info("note: %s", bench.cfg.note)
        previous = signal.signal(signal.SIGTERM, _terminated)  # a pre-empted job: stop like Ctrl-C (run.json says so)
        try:
            table = bench.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
            distributed.shutdown()
        print(format_table(table))
        print(f"\nresults: {bench.run_dir}/summary.md  (rows.jsonl, run.json)  "
              f"wall time {time.perf_counter() - start:.0f} s")
        return 0


def config_from_args(args: argparse.Namespace):
    """The :class:`~benchmark.config.ExperimentConfig` of ``run``'s flags: the config file (or the
    default suite), then the named flags, then each ``--set`` in order."""
    from benchmark.config import ExperimentConfig, apply_overrides, default_experiment, load_yaml, merge

    if args.config:  # a user's experiment file overrides the generic defaults of ExperimentConfig
        cfg = apply_overrides(ExperimentConfig(), load_yaml(args.config), f"config file {args.config}")
    else:  # no file: the default suite, benchmark/configs/default.yaml
        cfg = default_experiment()
    flags = {
        "dataset": args.dataset, "data_root": args.data_root, "learners": args.learners,
        "modalities": args.modalities, "fusions": args.fusions, "text_encoder": args.text_encoder,
        "seed": args.seed, "out": args.out, "device": args.device, "threads": args.threads,
    }
    overrides: dict = {k: v for k, v in flags.items() if v is not None}
    train = {k: v for k, v in {"episodes": args.train_episodes}.items() if v is not None}
    evals = {k: v for k, v in {"ways": args.ways, "shots": args.shots, "query": args.queries,
                               "episodes": args.test_episodes,
                               "query_modalities": args.query_modalities}.items() if v is not None}
    if train:
        overrides["train"] = train
    if evals:
        overrides["eval"] = evals
    cfg = apply_overrides(cfg, overrides, "command line")
    if args.train_episodes is not None:  # the flag sets every learner's training length
        cfg = merge(cfg, {"train_overrides": {k: {**v, "episodes": args.train_episodes}
                                              for k, v in cfg.train_overrides.items()}}, "--train-episodes")
    for item in args.set:
        cfg = _apply_set(cfg, item)
    if getattr(args, "download", False):
        cfg = merge(cfg, {"dataset_options": {**cfg.dataset_options, "download": True}}, "--download")
    runtime = {"out": "", "device": "", "threads": 0}  # where and how fast: still the default suite
    if not args.config and cfg.note and merge(cfg, runtime, "-") != merge(default_experiment(), runtime, "-"):
        cfg = merge(cfg, {"note": ""}, "command line")  # the default suite's note describes it alone
    return cfg


def _apply_set(cfg, item: str):
    """``--set a.b=VALUE``: ``VALUE`` parsed as YAML; a mapping key is added to, not replaced."""
    import yaml

    from benchmark.config import merge

    key, sep, value = item.partition("=")
    if not sep:
        raise BenchmarkError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=0.0005")
    nested: dict = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(value)
    current = getattr(cfg, parts[0], None)
    if isinstance(current, dict) and len(parts) > 1:  # add to a mapping (dataset_options...), not replace it
        nested = {parts[0]: _deep_update(dict(current), nested[parts[0]])}
    return merge(cfg, nested, f"--set {key}")


def _deep_update(base: dict, update: dict) -> dict:
    for k, v in update.items():
        base[k] = _deep_update(dict(base[k]), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def set_deterministic() -> None:
    """Make GPU runs bit-reproducible: deterministic kernels only (an error names any op without one)."""
    import os

    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # must be set before cuBLAS starts
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
