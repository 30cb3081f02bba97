"""Options of every component, checked one way.

A component's options are a ``Config`` dataclass: learners declare theirs; for fusions, backbones,
text encoders and datasets it is derived from the constructor's (or ``load``'s) keyword
parameters, their type hints and defaults, which already declare the options once.
:func:`check_options` builds it from the user's mapping: an unknown key is named with the
component and the closest valid names, a value of the wrong type is named with its key.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

from tasks.errors import BenchmarkError, suggest

def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and value types.

    ``where`` names the source (e.g. the YAML file) in error messages.
    """
    if not isinstance(data, dict):
        raise BenchmarkError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise BenchmarkError(f"{where}: unknown key {key!r}.{suggest(str(key), fields)} "
                                 f"Valid keys: {', '.join(fields)}")
        kwargs[key] = _coerce(hints[key], value, f"{where}: {key}")
    return cls(**kwargs)


def merge(base: Any, overrides: dict, where: str) -> Any:
    """Return a copy of dataclass ``base`` with the (nested) ``overrides`` applied and checked."""
    if not isinstance(overrides, dict):
        raise BenchmarkError(f"{where}: expected a mapping, got {type(overrides).__name__}")
    fields = {f.name: f for f in dataclasses.fields(base)}
    hints = typing.get_type_hints(type(base))
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise BenchmarkError(f"{where}: unknown key {key!r}.{suggest(str(key), fields)} "
                                 f"Valid keys: {', '.join(fields)}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge(current, value, f"{where}: {key}")
        else:
            changes[key] = _coerce(hints[key], value, f"{where}: {key}")
    return dataclasses.replace(base, **changes)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except BenchmarkError as err:
                errors.append(str(err))
        raise BenchmarkError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise BenchmarkError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, where) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise BenchmarkError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise BenchmarkError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BenchmarkError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BenchmarkError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise BenchmarkError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def component_config(cls: type, options: dict, where: str) -> Any:
    """Build a component's ``Config`` dataclass from user options, with checked keys and values."""
    try:
        return from_dict(cls, options, where)
    except (ValueError, TypeError) as err:
        raise BenchmarkError(f"{where}: {err}") from None


@functools.cache
def config_class(component: Any, supplied: tuple[str, ...] = ()) -> type | None:
    """The ``Config`` dataclass of ``component``: its own ``Config``, or one derived from the keyword
    parameters of its constructor (or of ``load`` for a dataset), less ``self`` and the ``supplied``
    ones the harness passes (e.g. ``in_dims``). ``None`` when it takes ``**kwargs`` (anything goes)."""
    own = getattr(component, "Config", None)
    if dataclasses.is_dataclass(own):
        return own
    function = component.load if hasattr(component, "load") else component.__init__
    parameters = inspect.signature(function).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return None
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation that cannot be resolved: check names, not types
        hints = {}
    fields = []
    for name, p in parameters.items():
        if name in ("self", *supplied) or p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        default = None if p.default is p.empty else p.default
        fields.append((name, hints.get(name, Any), dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{getattr(component, '__name__', 'Component')}Config", fields)


def check_options(kind: str, name: str, component: Any, options: Mapping[str, Any], where: str,
                  supplied: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check ``options`` against ``component``'s :func:`config_class`; return them with checked values.

    Args:
        kind: ``"fusion"``, ``"backbone"``, ``"text encoder"``, ``"dataset"`` or ``"learner"`` (for messages).
        name: the component's registered name; where: the config key, e.g. ``fusion_options.attention``.
        supplied: parameters the harness passes itself (not options).

    Raises:
        BenchmarkError: e.g. ``fusion_options.gated (fusion 'gated'): unknown key 'hiden'. Did you mean 'hidden'?``
    """
    config = config_class(component, supplied)
    if config is None:
        return dict(options)
    checked = from_dict(config, dict(options), f"{where} ({kind} {name!r})")
    return {key: getattr(checked, key) for key in options}
