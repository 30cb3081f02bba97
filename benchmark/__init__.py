"""Few-shot multimodal meta-learning benchmark.

The Python API (imported lazily, so ``import benchmark`` stays cheap)::

    from benchmark import run, evaluate, load_learner

See ``docs/python-api.md`` and :mod:`benchmark.api`. ``benchmark.evaluate`` is the API function;
the evaluation module of the same name stays importable as ``from benchmark.evaluate import ...``.
"""
from __future__ import annotations

import sys
import types

__all__ = ["run", "evaluate", "load_learner"]


class _Package(types.ModuleType):
    """The package module: the API names resolve to :mod:`benchmark.api`, even after the submodule
    ``benchmark.evaluate`` is imported (the import system would otherwise bind it over the function)."""

    def __getattribute__(self, name: str):
        if name in __all__:
            from benchmark import api

            return getattr(api, name)
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _Package
