"""Shared small cases for the TorchRec tests: a seeded compembed collection and matching jagged batches."""
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compembed.embedding import EmbeddingCollection, FeatureConfig

FEATURES = [
    FeatureConfig("multi_hot", 1000, 8, "qr", operation="mult"),  # looked up unpooled
    FeatureConfig("one_hot", 500, 8, "qr", operation="mult"),  # declared one-hot: pooled then combined
    FeatureConfig("added", 300, 8, "gqr", operation="add", num_partitions=3),
    FeatureConfig("concat", 200, 8, "crt", operation="concat", num_partitions=2),
    FeatureConfig("hashed", 100, 8, "hashing", mode="mean"),
]


def make_collection(seed: int = 0) -> EmbeddingCollection:
    torch.manual_seed(seed)
    return EmbeddingCollection(FEATURES, output="cat")


def make_batch(seed: int, batch_size: int, part: tuple[int, int] = (0, 1)):
    """A KJT of ``batch_size`` samples (this part's slice of the global batch) and the same bags as a dict."""
    g = torch.Generator().manual_seed(seed)
    keys, values, lengths = [], [], []
    for f in FEATURES:
        high = 2 if f.name == "one_hot" else 5
        bag_lengths = torch.randint(0, high, (batch_size,), generator=g)
        ids = torch.randint(0, f.num_embeddings, (int(bag_lengths.sum()),), generator=g)
        rank, world = part
        per = batch_size // world
        starts = torch.cat([torch.zeros(1, dtype=torch.long), bag_lengths.cumsum(0)])
        lo, hi = rank * per, (rank + 1) * per
        keys.append(f.name)
        values.append(ids[starts[lo] : starts[hi]])
        lengths.append(bag_lengths[lo:hi])
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.cat(values), lengths=torch.cat(lengths))
