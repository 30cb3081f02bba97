"""Speed and memory measurement (``python run_benchmark.py perf``), kept apart from the harness.

``suite`` holds the cases, the runner and the command-line options; ``maml_cases`` the MAML
training and memory cases; ``workloads`` the synthetic data and learners they time (the tests use
them too); ``measure`` the timers and memory readers; ``references`` the textbook loops the fast
paths are checked against. Nothing outside ``perf`` and the tests imports this package.
"""
