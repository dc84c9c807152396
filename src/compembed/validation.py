"""When and how compembed checks its inputs' values (ids in range, well-formed offsets).

Every module checks values through ``check_mode``, so one switch applies everywhere:

* ``"eager"``: plain CPU tensors outside any tracing. The values are read on the host and a bad
  input raises ``IndexError`` / ``ValueError`` naming the offending id or offset and its position.
* ``"graph"``: inside ``torch.compile``, ``torch.export``, ``torch.jit.trace`` or ``torch.fx``
  tracing, and on accelerators (CUDA, ...) in eager mode. The check becomes
  ``torch._assert_async(condition, message)``: one op in the graph (no data-dependent guard, no
  graph break) that runs on the device without a host sync. A bad input fails the run with
  ``message`` (on CPU a ``RuntimeError``; on CUDA a device-side assert, reported at the next sync).
  (``torch.jit.trace``, deprecated, checks its example inputs but drops the op from the trace.)
* ``"off"``: validation disabled (``set_validation(False)`` or inside ``trusted_inputs()``), or
  tensors without values: meta tensors and fake tensors outside tracing pass through untouched.

Type, dtype and shape checks need no values, so they always run.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ["set_validation", "validation_enabled", "trusted_inputs", "check_mode", "assert_in_graph", "tracing", "has_values"]

_enabled = True


def set_validation(enabled: bool) -> None:
    """Turn value checks of ids and offsets on (the default) or off for the whole process.

    Off, out-of-range ids are not caught: on CPU ``F.embedding`` raises a terse ``IndexError``, on
    CUDA a device-side assert fires, and a hashed or composed table may silently read a wrong row.
    Only switch it off for inputs known to be valid (e.g. ids produced by compembed's own vocabularies).
    """
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"set_validation takes a bool, got {enabled!r}")
    _enabled = enabled


def validation_enabled() -> bool:
    """Whether ids and offsets are checked (see ``set_validation``)."""
    return _enabled


@contextmanager
def trusted_inputs() -> Iterator[None]:
    """Skip the value checks of ids and offsets inside the ``with`` block, for trusted inputs.

    ``with compembed.trusted_inputs(): logits = model(dense, ids)``. The previous setting is
    restored on exit. A compiled or exported model keeps the choice that was in force when it was
    traced: trace inside the block for a graph without checks.
    """
    previous = _enabled
    set_validation(False)
    try:
        yield
    finally:
        set_validation(previous)


def _tracing() -> bool:
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    return is_fx_symbolic_tracing()


def _has_no_values(t: object) -> bool:
    return not isinstance(t, Tensor) or t.is_meta or isinstance(t, FakeTensor)


def check_mode(t: object) -> str:
    """How to check the values of ``t``: ``"eager"``, ``"graph"`` or ``"off"`` (see the module docstring)."""
    if not _enabled:
        return "off"
    if _tracing():
        return "graph"
    if _has_no_values(t):
        return "off"
    return "eager" if t.is_cpu else "graph"


def assert_in_graph(condition: Tensor, message: str) -> None:
    """Fail with ``message`` unless the 0-d bool tensor ``condition`` is true, without a host sync."""
    torch._assert_async(condition, message)


def tracing() -> bool:
    """Whether the code runs inside ``torch.compile``, ``torch.export``, jit or fx tracing."""
    return _tracing()


def has_values(t: object) -> bool:
    """Whether ``t`` holds values a module may branch on: a real tensor outside any tracing
    (not a meta or fake tensor, not a tensor being traced)."""
    return not _tracing() and not _has_no_values(t)
