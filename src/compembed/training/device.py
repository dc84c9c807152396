"""Where a run computes and in which precision: ``--device`` and ``--precision`` resolved in one place.

The parameters always stay float32 (the master weights, and the embedding tables the sparse
optimizers update); ``bf16``/``fp16`` run the forward pass under ``torch.autocast``, so matrix
products use the low precision and their gradients flow back to float32 parameters. ``fp16`` needs
a loss scale (``torch.amp.GradScaler``) and runs on CUDA only.

On CUDA the data loading leaves the critical path: ``prefetch`` gathers and pins the next batches
in a background thread while the device computes, and copies them with ``non_blocking``. On the
CPU batches are used as the loader yields them.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TypeVar

import torch

from ..data.batch import Batch
from .config import PRECISIONS

__all__ = ["DEVICES", "resolve_device", "check_precision", "autocast", "grad_scaler", "background", "prefetch"]

DEVICES = ("cpu", "cuda", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

T = TypeVar("T")


def resolve_device(name: str | torch.device = "cpu") -> torch.device:
    """``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (CUDA when available, else the CPU) as a ``torch.device``.

    Raises:
        ValueError: an unknown name, or CUDA asked for where torch sees no CUDA device.
    """
    text = str(name)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = text.split(":", 1)[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device: expected one of {DEVICES} (or cuda:N), got {text!r}")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"device: {text!r} is not a device name (expected cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "this torch build has no CUDA support" if torch.version.cuda is None else \
                "torch finds no CUDA device (driver, CUDA_VISIBLE_DEVICES?)"
            raise ValueError(f"device {text!r}: CUDA is not available ({built}); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {text!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """Raise a clear ``ValueError`` unless ``precision`` can train on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 runs on CUDA only (it needs a loss scale and is slow on the CPU), "
                         f"and this run's device is {device}; use bf16 on the CPU")


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (disabled for fp32)."""
    return torch.autocast(device.type, dtype=_DTYPES.get(precision, torch.bfloat16), enabled=precision in _DTYPES)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler: active for fp16 (on CUDA), a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def background(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """``items`` produced by a background thread, up to ``depth`` ahead of the consumer.

    An exception of the producer is raised in the consumer at its place in the sequence; closing
    the iterator early (``break``) stops the producer.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as err:  # handed to the consumer
            put((end, err))

    thread = threading.Thread(target=produce, name="compembed-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = slots.get()
            if err is not None:
                raise err
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def prefetch(batches: Iterable[Batch], device: torch.device, depth: int = 2) -> Iterator[Batch]:
    """The batches on ``device``. On CUDA a background thread gathers and pins the next ``depth``
    batches and each is copied with ``non_blocking``, so loading overlaps the device's work; on the
    CPU ``batches`` pass through unchanged."""
    if device.type != "cuda":
        yield from batches
        return
    for batch in background((b.pin_memory() for b in batches), depth):
        yield batch.to(device)
