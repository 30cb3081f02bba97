"""Command line: ``python run_benchmark.py [run] ...``, ``ls``.

All work is done by the Python API (:mod:`benchmark.runner`); this module only
parses flags into an :class:`~benchmark.config.ExperimentConfig`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import time
from pathlib import Path

from tasks.errors import BenchmarkError

log = logging.getLogger("benchmark")

RUN_EXAMPLES = """\
examples:
  python run_benchmark.py                      # default suite on the built-in 'shapes' dataset
  python run_benchmark.py --shots 1 --test-episodes 200 --train-episodes 100
  python run_benchmark.py --learners protonet --modalities image+text --fusions attention \\
      --query-modalities image                 # queries without text
  python run_benchmark.py --config benchmark/configs/shapes_default.yaml --set train.lr=0.0005
  python run_benchmark.py ls learners          # what is registered ('ls fusions', 'ls datasets', ...)

An interrupted run continues where it stopped when the same command is run again
(finished methods are kept, training resumes from its last checkpoint); --no-resume starts over.
"""

REPRODUCE_EXAMPLES = """\
examples:
  python run_benchmark.py reproduce --list
  python run_benchmark.py reproduce omniglot_protonet_5w1s --data-root ../shared/data --threads 1
  python run_benchmark.py reproduce omniglot_protonet_5w1s_short --data-root ../shared/data --eval-only
"""

KINDS = ("learners", "fusions", "backbones", "text_encoders", "datasets")


def _csv(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_benchmark.py", description="Few-shot multimodal (image + text) meta-learning benchmark.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=RUN_EXAMPLES)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (e.g. my_pkg.my_learner) to register your own components")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="train and evaluate (the default command)", epilog=RUN_EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", help="YAML experiment file; flags override it")
    run.add_argument("--dataset", help="dataset name (default: shapes, built in)")
    run.add_argument("--data-root", help="folder holding the dataset in its official layout")
    run.add_argument("--download", action="store_true",
                     help="fetch the dataset into --data-root if it is missing (where a download exists)")
    run.add_argument("--learners", type=_csv(str), help="comma-separated learner names")
    run.add_argument("--modalities", type=_csv(str), help="e.g. image,text,image+text")
    run.add_argument("--fusions", type=_csv(str), help="fusions for multimodal settings, e.g. concat,attention")
    run.add_argument("--text-encoder", help="bow (trainable) or minilm (frozen all-MiniLM-L6-v2)")
    run.add_argument("--query-modalities", help="what queries show: image+text (default) or image")
    run.add_argument("--ways", type=_csv(int), help="test ways, e.g. 5,20")
    run.add_argument("--shots", type=_csv(int), help="test shots, e.g. 1,5")
    run.add_argument("--queries", type=int, help="test queries per class (default 15)")
    run.add_argument("--train-episodes", type=int, help="meta-training steps per method")
    run.add_argument("--test-episodes", type=int, help="episodes per test manifest (default 600)")
    run.add_argument("--seed", type=int, help="seed for episodes and initialisation (default 0)")
    run.add_argument("--seeds", help="run each of these seeds in turn (e.g. 0,1,2 or 0-4; finished seeds are skipped "
                                     "on a rerun) and write tables over them: mean over seeds with the across-seed "
                                     "95%% CI, paired comparisons per seed and combined")
    run.add_argument("--out", help="output directory; each run writes a subfolder (default: runs)")
    run.add_argument("--device", help="cpu, cuda, cuda:N")
    run.add_argument("--threads", type=int, help="torch CPU threads")
    run.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                     help="continue an unfinished run of the same config in --out from its finished methods and "
                          "last training checkpoint (default); --no-resume moves earlier results of this run "
                          "aside (to <run>/replaced-<time>/) and starts over")
    run.add_argument("--deterministic", action="store_true",
                     help="use deterministic algorithms only (torch.use_deterministic_algorithms, "
                          "CUBLAS_WORKSPACE_CONFIG=:4096:8): bit-identical GPU reruns, somewhat slower; "
                          "CPU runs are deterministic without it")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any config key, e.g. train.lr=0.0005 (value parsed as YAML)")

    table = sub.add_parser("table", help="regenerate summary and paired-comparison tables from run folders")
    table.add_argument("run_dirs", nargs="+", help="run folders (each holds rows.jsonl)")
    table.add_argument("--baseline", default="image", help="modality setting compared against (default: image)")
    table.add_argument("--out", help="folder for the tables, created if missing (default: the run folder; "
                                     "required with several runs)")
    table.add_argument("--metric", default="accuracy", help="metric of the comparison tables: accuracy "
                                                              "(default), nll, ece (see benchmark/metrics.py)")

    from benchmark.report.command import add_arguments as report_arguments

    report_arguments(sub.add_parser("report", help="figures, an offline HTML page, LaTeX and CSV tables from run "
                                                   "folders", formatter_class=argparse.RawDescriptionHelpFormatter))

    rep = sub.add_parser("reproduce", help="reproduce a published number (protocols in benchmark/configs)",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=REPRODUCE_EXAMPLES)
    rep.add_argument("name", nargs="?", help="protocol name (see --list)")
    rep.add_argument("--list", action="store_true", help="list the protocols with published and committed numbers")
    rep.add_argument("--data-root", help="folder holding the dataset in its official layout")
    rep.add_argument("--eval-only", action="store_true",
                     help="evaluate the committed checkpoint results/checkpoints/NAME.pt instead of training")
    rep.add_argument("--test-episodes", type=int,
                     help="with --eval-only: only the first N episodes of the fixed manifest (a quick check)")
    rep.add_argument("--out", default="runs/reproduce", help="run folder (default: runs/reproduce)")
    rep.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    rep.add_argument("--threads", type=int, default=0, help="torch CPU threads")

    ls = sub.add_parser("ls", help="list registered components")
    ls.add_argument("kind", choices=KINDS)
    ls.add_argument("pattern", nargs="?", default="*", help="shell wildcard, e.g. 'proto*'")

    from benchmark.perf.suite import add_arguments as perf_arguments

    perf_arguments(sub.add_parser("perf", help="speed benchmark: throughput, memory, ratios (JSON)"))
    return parser


def config_from_args(args: argparse.Namespace):
    import yaml

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
        cfg = merge(cfg, nested, f"--set {key}")
    if getattr(args, "download", False):
        cfg = merge(cfg, {"dataset_options": {**cfg.dataset_options, "download": True}}, "--download")
    return cfg


def _deep_update(base: dict, update: dict) -> dict:
    for k, v in update.items():
        base[k] = _deep_update(dict(base[k]), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def cmd_table(args: argparse.Namespace) -> int:
    from benchmark.tablewrite import print_tables

    return print_tables([Path(d) for d in args.run_dirs], args.out, args.baseline, args.metric)


def cmd_ls(args: argparse.Namespace) -> int:
    import learners  # noqa: F401
    import tasks.datasets  # noqa: F401
    from learners.registry import BACKBONES, FUSIONS, LEARNERS, TEXT_ENCODERS
    from tasks.datasets import DATASETS

    registry = {"learners": LEARNERS, "fusions": FUSIONS, "backbones": BACKBONES,
                "text_encoders": TEXT_ENCODERS, "datasets": DATASETS}[args.kind]
    for name in registry.names(args.pattern):
        doc = (registry.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:18s} {doc[0] if doc else ''}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.runner import Benchmark
    from benchmark.tablewrite import format_table

    start = time.perf_counter()
    if args.deterministic:
        set_deterministic()
        log.info("--deterministic: deterministic kernels only. The cost is speed on GPU (cuDNN autotuning off, "
                 "slower deterministic kernels; not yet measured for this suite: compare `perf --device cuda` "
                 "with and without) and an error naming any operation that has no deterministic kernel")
    if args.seeds is not None:
        return _run_seeds(args)
    bench = Benchmark(config_from_args(args), resume=args.resume)
    log.info("run %s: %d methods, writing to %s", bench.run_id, len(bench.methods), bench.run_dir)
    if bench.cfg.note:
        log.info("note: %s", bench.cfg.note)
    previous = signal.signal(signal.SIGTERM, _terminated)  # a pre-empted job: stop like Ctrl-C (run.json says so)
    try:
        table = bench.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_table(table))
    print(f"\nresults: {bench.run_dir}/summary.md  (rows.jsonl, run.json)  "
          f"wall time {time.perf_counter() - start:.0f} s")
    return 0


def _run_seeds(args: argparse.Namespace) -> int:
    from benchmark.seeds import parse_seeds, run_seeds
    from benchmark.tablewrite import wide_text

    if args.seed is not None:
        raise BenchmarkError("give --seed or --seeds, not both")
    seeds = parse_seeds(args.seeds)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        run_dirs, tables, out = run_seeds(config_from_args(args), seeds, resume=args.resume)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(wide_text(tables.wide, tables.metric, tables.baseline).to_string(index=False))
    print(f"\nruns: {', '.join(d.name for d in run_dirs)}; tables over seeds {args.seeds}: {out}/comparison_wide.md")
    return 0


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


def cmd_reproduce(args: argparse.Namespace) -> int:
    from benchmark import reproduce

    if args.list or not args.name:
        print(reproduce.list_protocols())
        return 0
    protocol = reproduce.load_protocol(args.name)
    if args.test_episodes is not None and not args.eval_only:
        raise BenchmarkError("--test-episodes only applies with --eval-only (training uses the protocol's manifest)")
    if args.eval_only:
        outcome = reproduce.evaluate_checkpoint(protocol, args.data_root, args.out, args.threads, args.device,
                                                args.test_episodes)
        match = reproduce.matches_committed(outcome)
        print(outcome.describe())
        print("committed episodes reproduced exactly: "
              + {True: "yes", False: "NO", None: "(nothing committed)"}[match])
        if outcome.full_manifest:
            reproduce.record_outcome(outcome, data_root=args.data_root)
        return 0 if match is not False else 1
    outcome = reproduce.train_protocol(protocol, args.data_root, args.out, args.threads, args.device)
    print(outcome.describe())
    print(f"recorded in {reproduce.RESULTS_DIR / 'reproduced.csv'} and README.md; "
          f"checkpoint results/checkpoints/{protocol.name}.pt")
    return 0


def load_plugins(modules: list[str]) -> None:
    """Import user modules named explicitly with ``--plugin`` (they register components)."""
    for name in modules:
        if name.endswith(".py") or "/" in name:
            path = Path(name)
            sys.path.insert(0, str(path.parent.resolve()))
            name = path.stem
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise BenchmarkError(f"--plugin {name!r} could not be imported: {err}") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = {"run", "ls", "table", "perf", "reproduce", "report"}
    first = next((i for i, a in enumerate(argv) if not a.startswith("-") and argv[i - 1:i] != ["--plugin"]), None)
    if first is None or argv[first] not in commands:
        if not any(a in ("-h", "--help") for a in argv[:1]):
            # `run` is the default command; keep global flags in front of it
            globals_ = [a for a in argv if a == "--debug"]
            argv = globals_ + ["run"] + [a for a in argv if a != "--debug"]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    try:
        load_plugins(args.plugin)
        if args.command == "ls":
            return cmd_ls(args)
        if args.command == "table":
            return cmd_table(args)
        if args.command == "report":
            from benchmark.report.command import main_from_args

            return main_from_args(args)
        if args.command == "perf":
            from benchmark.perf.suite import main_from_args

            return main_from_args(args)
        if args.command == "reproduce":
            return cmd_reproduce(args)
        return cmd_run(args)
    except BenchmarkError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file the user pointed at, or the disk: their environment, not a bug
        if args.debug:
            raise
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot access{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished methods and the last training checkpoint are kept in the run folder; "
              "rerun the same command to continue",
              file=sys.stderr)
        return 130
    except Exception as err:  # an internal error: a short message, the traceback with --debug
        if args.debug:
            raise
        print(f"internal error: {type(err).__name__}: {err}\n(rerun with --debug for the traceback, "
              "and please report it)", file=sys.stderr)
        return 1
