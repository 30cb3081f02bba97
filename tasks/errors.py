"""User-facing errors.

Every mistake a user can make (a bad config value, a missing folder, an
impossible episode) raises :class:`BenchmarkError` with a message that names
the offending file, key or value and says what to do. The command line prints
the message and exits non-zero; tracebacks are shown only with ``--debug``.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchmarkError(Exception):
    """An error caused by the user's input, with a message meant for them."""


class UnsupportedSetting(BenchmarkError):
    """A learner, fusion or task setting that cannot work together."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean 'a', 'b'?"`` for the closest choices, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + ", ".join(repr(c) for c in close) + "?"
