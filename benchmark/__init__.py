"""The harness: configs, runner, evaluation, statistics, results store and CLI."""
