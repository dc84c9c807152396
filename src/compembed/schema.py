"""Type checks of config dataclasses, driven by their fields' annotations.

``check_fields(obj, where)`` checks every field of a dataclass instance against its annotation and
stores the value's normal form:

- ``int``: an integer (a NumPy one too), not a bool, not ``64.5`` nor ``64.0``;
- ``float``: any finite real number, stored as ``float``;
- ``str``, ``bool``: only themselves;
- ``tuple[X, ...]``: a list or tuple of ``X`` (not a string), stored as a tuple;
- ``dict[K, V]``: a dict of ``K`` to ``V``;
- ``X | None``: ``X`` or None; a dataclass: an instance of it; ``Any``: anything.

A mismatch raises a ``ValueError`` naming the key, the expected type and the value, e.g.
``model config: bottom_mlp must be a list of integers, got '512' (str)``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from typing import Any

__all__ = ["check_fields", "check_value", "describe", "field_types"]

_MISMATCH = object()
_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "booleans")}


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_fields(obj: Any, where: str) -> None:
    """Check every field of the dataclass instance ``obj`` and store its normal form (see the module doc);
    errors start with ``where``."""
    for name, tp in field_types(type(obj)).items():
        setattr(obj, name, check_value(getattr(obj, name), tp, name, where))


def check_value(value: Any, tp: Any, key: str, where: str) -> Any:
    """``value`` in the normal form of the annotation ``tp``, or a ``ValueError`` naming ``key``."""
    out = _convert(value, tp)
    if out is _MISMATCH:
        raise ValueError(f"{where}: {key} must be {describe(tp)}, got {value!r} ({type(value).__name__})")
    return out


def describe(tp: Any, plural: bool = False) -> str:
    """``tp`` in words: ``an integer``, ``a list of integers``, ``a number (or left out)``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(describe(a, plural) for a in inner)
        return f"{text} (or left out)" if len(inner) < len(args) else text
    if tp in _NAMES:
        return _NAMES[tp][plural]
    if origin is tuple:
        return ("lists of " if plural else "a list of ") + describe(args[0], plural=True)
    if origin is dict:
        return "tables" if plural else f"a table of {describe(args[1], plural=True)}"
    if tp is Any:
        return "values" if plural else "any value"
    name = getattr(tp, "__name__", str(tp))
    return f"{name}s" if plural else f"a {name}"


def _convert(value: Any, tp: Any) -> Any:
    """``value`` in the normal form of ``tp``, or ``_MISMATCH``."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None if type(None) in args else _MISMATCH
        for option in args:
            out = _convert(value, option) if option is not type(None) else _MISMATCH
            if out is not _MISMATCH:
                return out
        return _MISMATCH
    if tp is bool or tp is str:
        return value if isinstance(value, tp) else _MISMATCH
    if tp is int:
        return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else _MISMATCH
    if tp is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok else _MISMATCH
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(args) != 2 or args[1] is not Ellipsis:
            return _MISMATCH
        items = tuple(_convert(v, args[0]) for v in value)
        return _MISMATCH if any(v is _MISMATCH for v in items) else items
    if origin is dict:
        if not isinstance(value, dict):
            return _MISMATCH
        pairs = [(_convert(k, args[0]), _convert(v, args[1])) for k, v in value.items()]
        return _MISMATCH if any(x is _MISMATCH for pair in pairs for x in pair) else dict(pairs)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _MISMATCH
    raise TypeError(f"check_value: annotation {tp!r} is not supported")
