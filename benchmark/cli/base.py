"""The shared base of the command line: a :class:`Subcommand` per module, the parser and ``main``.

A subcommand is a :class:`Subcommand` subclass in its own module of :mod:`benchmark.cli`, listed
once in ``benchmark/cli/__init__.py``. Its arguments are added only when it is the command being
parsed (or its help is shown), so a subcommand's heavy imports (``perf`` imports its whole suite)
cost nothing to the others. The default command's flags are also accepted without its name
(``python run_benchmark.py --shots 1`` is ``run --shots 1``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from tasks.errors import BenchmarkError


class Subcommand:
    """One subcommand: its name, one-line help, arguments and what it does."""

    name: str = ""
    help: str = ""
    epilog: str | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this subcommand's flags to ``parser`` (heavy imports belong in :meth:`run`)."""

    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit code. Raise :class:`BenchmarkError` for bad input."""
        raise NotImplementedError


class _LazyParser(argparse.ArgumentParser):
    """A subparser whose arguments are added (by ``setup``) the first time it parses or shows help."""

    def __init__(self, *args, setup: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._setup = setup

    def _ready(self) -> None:
        if self._setup is not None:
            setup, self._setup = self._setup, None
            setup(self)

    def parse_known_args(self, args=None, namespace=None):
        self._ready()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._ready()
        return super().format_help()

    def format_usage(self) -> str:
        self._ready()
        return super().format_usage()


class _RootParser(argparse.ArgumentParser):
    """The top-level parser: names an unknown flag rather than the value after it.

    Without this, ``--learn x`` reads as the subcommand ``x`` (the unknown flag is skipped).
    """

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        if "invalid choice" in message and self._subparsers is not None:
            known = set(self._option_string_actions)
            unknown = [a for a in getattr(self, "_argv", []) if a.startswith("-") and a.split("=")[0] not in known]
            if unknown:
                message = f"unrecognized arguments: {' '.join(unknown)} (see --help)"
        super().error(message)


def _common_arguments(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--debug`` and ``--plugin``, accepted before and after the subcommand."""
    parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="show tracebacks and debug logging")
    parser.add_argument("--plugin", action="append", default=[] if top else argparse.SUPPRESS, metavar="MODULE",
                        dest="plugin" if top else "more_plugins",
                        help="import MODULE (e.g. my_pkg.my_learner) to register your own components")


def build_parser(commands: Sequence[Subcommand], default: Subcommand, prog: str = "run_benchmark.py",
                 description: str = "") -> argparse.ArgumentParser:
    """The top-level parser: the common flags, ``default``'s flags, and one subparser per command."""
    parser = _RootParser(
        prog=prog, description=f"{description} Without a subcommand: `{default.name}`, whose flags are listed here.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=default.epilog, allow_abbrev=False)
    _common_arguments(parser, top=True)
    default.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", parser_class=_LazyParser, metavar="{" + ",".join(
        c.name for c in commands) + "}")

    for command in commands:
        def setup(p: argparse.ArgumentParser, command: Subcommand = command) -> None:
            _common_arguments(p, top=False)
            command.add_arguments(p)

        sub.add_parser(command.name, help=command.help, epilog=command.epilog, setup=setup, allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def main(parser: argparse.ArgumentParser, commands: Sequence[Subcommand], default: Subcommand,
         argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the chosen command, and turn errors into messages and exit codes.

    Exit codes: 0 success, 1 internal error (traceback with ``--debug``), 2 bad input or an
    unusable environment (a :class:`BenchmarkError` or ``OSError``), 130 interrupted.
    """
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    command = {c.name: c for c in commands}.get(args.command, default)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    try:
        from benchmark.plugins import load_plugins  # records each plugin's source hash for the run id

        load_plugins(args.plugin + getattr(args, "more_plugins", []))
        return command.run(args)
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
              "rerun the same command to continue", file=sys.stderr)
        return 130
    except Exception as err:  # an internal error: a short message, the traceback with --debug
        if args.debug:
            raise
        print(f"internal error: {type(err).__name__}: {err}\n(rerun with --debug for the traceback, "
              "and please report it)", file=sys.stderr)
        return 1
