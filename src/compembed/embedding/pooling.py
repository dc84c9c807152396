"""Pooling per-id vectors into bags with exactly ``nn.EmbeddingBag``'s input conventions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..validation import assert_in_graph, check_mode, tracing

__all__ = ["pool_bags", "check_bag_inputs", "MODES"]

MODES = ("sum", "mean", "max")
# The benchmark sets this to False to measure what the offsets check costs; keep it True otherwise.
CHECK_OFFSETS = True


def check_bag_inputs(
    ids: Tensor, offsets: Tensor | None, per_sample_weights: Tensor | None = None, include_last_offset: bool = False
) -> None:
    """Raise a clear error unless ``offsets`` and ``per_sample_weights`` fit ``ids`` as ``nn.EmbeddingBag`` needs.

    Offsets ``(B,)`` (``(B+1,)`` with ``include_last_offset``) of 1-D ids ``(N,)`` are integers that
    start at 0, never decrease and stay within ``[0, N]``; with ``include_last_offset`` the last one,
    the end of the last bag, is N. Otherwise torch reads out of bounds (silent garbage) or fails
    with a cryptic message. The errors name the offending bag. The valid case costs a few
    vectorised comparisons (no loop over bags). Weights ``(*ids.shape)`` are converted to the
    tables' dtype by the caller.
    """
    if per_sample_weights is not None:
        if not isinstance(per_sample_weights, Tensor) or per_sample_weights.is_complex():
            kind = per_sample_weights.dtype if isinstance(per_sample_weights, Tensor) else type(per_sample_weights).__name__
            raise TypeError(f"per_sample_weights must be a real tensor, got {kind}")
        if per_sample_weights.shape != ids.shape:
            raise ValueError(f"per_sample_weights must have the shape of the ids {tuple(ids.shape)}, "
                             f"got {tuple(per_sample_weights.shape)}")
    if offsets is None or ids.dim() != 1 or not CHECK_OFFSETS:
        return  # 2-D ids take no offsets, 1-D ids need them: F.embedding_bag says so itself
    if not isinstance(offsets, Tensor) or offsets.dtype not in (torch.int64, torch.int32):
        kind = offsets.dtype if isinstance(offsets, Tensor) else type(offsets).__name__
        raise TypeError(f"offsets must be an int64 or int32 tensor, got {kind}")
    if offsets.dim() != 1:
        raise ValueError(f"offsets must be 1-D (one start per bag), got shape {tuple(offsets.shape)}")
    n = ids.numel()
    if offsets.numel() == 0:
        if include_last_offset or n:
            raise ValueError(f"offsets is empty, so the {n} ids belong to no bag"
                             + (" (include_last_offset needs at least the end offset)" if include_last_offset else ""))
        return
    mode = check_mode(offsets)
    if mode == "graph":  # compiled, exported or on an accelerator: one device-side assert, no sync
        assert_in_graph(_offsets_ok(offsets, n, include_last_offset),
                        "compembed: offsets must start at 0, never decrease and end "
                        f"{'at' if include_last_offset else 'within'} the number of ids (run the batch "
                        "eagerly on the CPU to see which bag is wrong)")
    elif mode == "eager" and not _offsets_valid(offsets, n, include_last_offset):
        raise ValueError(_offsets_problem(offsets, n, include_last_offset))


def _offsets_ok(offsets: Tensor, n: int, include_last_offset: bool) -> Tensor:
    """A 0-d bool tensor: non-empty ``offsets`` start at 0, never decrease and end within ``n``
    (at ``n`` with the last offset). Only tensor ops: no host sync."""
    end_ok = offsets[-1] == n if include_last_offset else offsets[-1] <= n
    # Non-decreasing: every offset is the running maximum (no (B-1,) slices: export needs B >= 3 for those).
    return (offsets[0] == 0) & end_ok & torch.all(offsets == torch.cummax(offsets, 0).values)


def _offsets_valid(offsets: Tensor, n: int, include_last_offset: bool) -> bool:
    """``_offsets_ok`` read on the host (CPU): three cheap scalar reads beat building one combined tensor."""
    last = int(offsets[-1])
    return (int(offsets[0]) == 0 and (last == n if include_last_offset else last <= n)
            and bool(torch.all(offsets[1:] >= offsets[:-1])))


def _offsets_problem(offsets: Tensor, n: int, include_last_offset: bool) -> str:
    """What is wrong with ``offsets`` of ``n`` ids, naming the first bad bag (only called on bad offsets)."""
    count = offsets.numel()

    def at(i: int) -> str:
        what = f"the end of bag {i - 1}" if include_last_offset and 0 < i == count - 1 else f"the start of bag {i}"
        return f"offsets[{i}] = {int(offsets[i])} ({what})"

    def first(mask: Tensor) -> int | None:
        hits = mask.nonzero()
        return int(hits[0]) if hits.numel() else None

    if (i := first(offsets < 0)) is not None:
        return f"{at(i)} is negative; offsets must lie in [0, {n}], the number of ids"
    if int(offsets[0]) != 0:
        return f"{at(0)} must be 0: the first bag starts at the first id"
    if (i := first(offsets > n)) is not None:
        return f"{at(i)} is past the end of the input ({n} ids)"
    if (i := first(offsets[1:] < offsets[:-1])) is not None:
        return f"offsets must be non-decreasing: {at(i + 1)} is below offsets[{i}] = {int(offsets[i])}"
    return (f"with include_last_offset the last offset is the end of the last bag and must equal the number "
            f"of ids {n}, got {at(count - 1)}")


def pool_bags(
    vectors: Tensor,
    ids: Tensor,
    offsets: Tensor | None,
    per_sample_weights: Tensor | None,
    mode: str,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
) -> Tensor:
    """Pool per-id vectors ``(*ids.shape, D)`` into bags ``(B, D)``.

    ``ids`` and ``offsets`` follow ``nn.EmbeddingBag``: a 2-D ``(B, L)`` input is B bags of L ids;
    a 1-D input is cut into bags at ``offsets``. The pooling is done by ``F.embedding_bag`` over the
    per-id vectors indexed by position, so every convention (modes, ``per_sample_weights``,
    ``include_last_offset``, empty bags, ``padding_idx`` excluded from sums and means) is torch's own.
    Compiled or exported, ``padding_idx`` is applied by ``_pool_without_padding`` instead (the same
    function): ``F.embedding_bag`` with a ``padding_idx`` fixes the table's row count, here the batch size.
    """
    check_bag_inputs(ids, offsets, per_sample_weights, include_last_offset)
    dim = vectors.shape[-1]
    flat = vectors.reshape(-1, dim)
    num = flat.shape[0]
    # One-hot bags need no pooling: the vector of the single id is the bag.
    if ids.dim() == 2 and ids.shape[1] == 1 and offsets is None and padding_idx is None and not include_last_offset:
        if per_sample_weights is None:
            return flat
        if mode == "sum" and per_sample_weights.shape == ids.shape:
            return flat * per_sample_weights.reshape(-1, 1).to(flat.dtype)
    positions = torch.arange(num, device=ids.device).view(ids.shape)
    if per_sample_weights is not None:
        per_sample_weights = per_sample_weights.to(flat.dtype)
    if padding_idx is not None and tracing():
        return _pool_without_padding(flat, positions, ids != padding_idx, offsets, per_sample_weights, mode,
                                     include_last_offset)
    pad_position = None
    if padding_idx is not None:
        # Ids equal to padding_idx point at an extra zero row that embedding_bag skips.
        flat = torch.cat([flat, flat.new_zeros(1, dim)])
        positions = torch.where(ids == padding_idx, num, positions)
        pad_position = num
    return F.embedding_bag(
        positions,
        flat,
        offsets,
        mode=mode,
        per_sample_weights=per_sample_weights,
        include_last_offset=include_last_offset,
        padding_idx=pad_position,
    )


def _pool_without_padding(
    flat: Tensor, positions: Tensor, keep: Tensor, offsets: Tensor | None, per_sample_weights: Tensor | None,
    mode: str, include_last_offset: bool,
) -> Tensor:
    """``F.embedding_bag`` over the vectors ``flat`` ``(N, D)`` at ``positions`` with the ids where ``keep``
    is False left out of every bag, as its ``padding_idx`` does: sums skip them, means divide by the
    ids kept, maxima ignore them, and a bag without a kept id is zeros."""
    kept = keep.reshape(-1, 1)
    values = torch.where(kept, flat, float("-inf") if mode == "max" else 0.0)
    pooled = F.embedding_bag(positions, values, offsets, mode="sum" if mode == "mean" else mode,
                             per_sample_weights=per_sample_weights, include_last_offset=include_last_offset)
    if mode == "sum":
        return pooled
    counts = F.embedding_bag(positions, kept.to(flat.dtype), offsets, mode="sum", include_last_offset=include_last_offset)
    return pooled / counts.clamp(min=1) if mode == "mean" else torch.where(counts > 0, pooled, 0.0)
