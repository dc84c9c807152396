"""Pooling per-id vectors into bags with exactly ``nn.EmbeddingBag``'s input conventions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pool_bags", "MODES"]

MODES = ("sum", "mean", "max")


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
    """
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
