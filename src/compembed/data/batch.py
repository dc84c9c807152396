"""The batch layout that data loaders yield and models consume."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Batch"]


@dataclass
class Batch:
    """One mini-batch of a CTR dataset.

    Attributes:
        dense: float32 ``(B, num_dense)`` dense features (already transformed, e.g. log(1 + x)).
        sparse: int64 ``(B, F)`` ids, one per single-valued categorical feature, in the dataset's
            feature order; ``(B, 0)`` when there are none.
        labels: float32 ``(B,)`` click labels in {0, 1}.
        multi_hot: multi-valued features by name: int64 ``(values (N,), offsets (B,))`` bags in
            ``nn.EmbeddingBag``'s 1-D layout.
        click_prob: float32 ``(B,)`` true click probabilities where the data is synthetic and
            knows them (for the Bayes-optimal loss), else None.
    """

    dense: Tensor
    sparse: Tensor
    labels: Tensor
    multi_hot: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    click_prob: Tensor | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def features(self, names: list[str]) -> Tensor | dict[str, Tensor | tuple[Tensor, Tensor]]:
        """The categorical input of ``EmbeddingCollection`` for features ``names`` (sparse columns first)."""
        if not self.multi_hot:
            return self.sparse
        single = [n for n in names if n not in self.multi_hot]
        out: dict[str, Tensor | tuple[Tensor, Tensor]] = {
            name: self.sparse[:, j : j + 1] for j, name in enumerate(single)
        }
        out.update(self.multi_hot)
        return out

    def to(self, device: torch.device | str) -> "Batch":
        """The batch on ``device`` (copies from pinned memory do not block the host)."""
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> "Batch":
        """The batch in page-locked host memory, for asynchronous copies to a CUDA device."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn) -> "Batch":
        move = lambda t: None if t is None else fn(t)  # noqa: E731
        return Batch(
            dense=move(self.dense), sparse=move(self.sparse), labels=move(self.labels),
            multi_hot={k: (move(v), move(o)) for k, (v, o) in self.multi_hot.items()},
            click_prob=move(self.click_prob),
        )
