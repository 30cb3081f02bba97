"""A generic name -> class registry with helpful errors.

One instance exists per kind of component (learners, fusions, backbones,
text encoders, datasets). Components register with a decorator on the class::

    @LEARNERS.register("protonet")
    class ProtoNet(Learner): ...

A duplicate name is an error; an unknown name raises a :class:`BenchmarkError`
that lists the closest registered names.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from tasks.errors import BenchmarkError, suggest

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to registered objects (usually classes) of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator that registers the class under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by "
                    f"{_qualname(self._entries[name])}; pick another name for {_qualname(obj)}"
                )
            self._entries[name] = obj
            try:
                obj.registry_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise an error suggesting close names."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise BenchmarkError(
                f"unknown {self.kind} {name!r}.{suggest(name, self._entries)} "
                f"Registered {self.kind}s: {known}. "
                f"(`python run_benchmark.py ls {self.kind}s` lists them; a {self.kind} of your own is registered "
                "by loading its file with --plugin PATH.py or --plugin MODULE.)"
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style wildcard pattern."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"
