"""A restricted unpickler for the dataset pickles (CIFAR-100, tieredImageNet).

``pickle.load`` can run any code a file names. The published dataset pickles hold only numpy
arrays and plain Python values (dicts, lists, strings, numbers), so :func:`load` admits exactly
those: any other global (``os.system``, ``builtins.eval``, a class) stops the load with an error.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from tasks.errors import BenchmarkError

# (module, name) pairs a numpy array or scalar pickle needs (numpy 1.x and 2.x module paths)
ALLOWED = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
     ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"), ("codecs", "encode"),
     ("collections", "OrderedDict")} | {
    (module, name) for module in ("builtins", "__builtin__")  # __builtin__: Python 2 pickles (protocol < 3)
    for name in ("set", "frozenset", "bytearray", "complex", "slice", "range")}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of :data:`ALLOWED`; anything else raises ``pickle.UnpicklingError``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load the global {module}.{name}: a dataset pickle should hold "
                                     "only numpy arrays and plain Python values")


def load(path: str | Path, what: str, encoding: str = "latin1") -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    Raises:
        BenchmarkError: a missing, corrupt or truncated file, or one naming a global that is not allowed
            (``what`` names the dataset in the message).
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            return RestrictedUnpickler(f, encoding=encoding).load()
    except FileNotFoundError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise BenchmarkError(f"{what}: cannot read {path}: {err} (corrupt, truncated or not a dataset pickle?)") from None
