"""Single-process behaviour of compembed.distributed (the multi-process paths are in test_ddp.py)."""
import pytest
import torch
from torch import nn

from compembed.distributed import (
    DistContext, all_reduce_sums, global_batch_loss, init_from_env, sparse_parameters, unwrap_model, wrap_model,
)
from compembed.embedding import EmbeddingCollection, FeatureConfig


def test_without_torchrun_is_single_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_from_env()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)


def test_partial_torchrun_environment_is_an_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="start the job with torchrun"):
        init_from_env()


def test_single_process_helpers_are_identities():
    ctx = DistContext()
    model = nn.Linear(2, 1)
    assert wrap_model(model, ctx) is model and unwrap_model(model) is model
    local = torch.tensor(0.5, requires_grad=True)
    loss, mean, count = global_batch_loss(local, 7, ctx)
    assert loss is local and mean == 0.5 and count == 7
    assert all_reduce_sums({"a": 1.0, "b": 2.0}, ctx) == {"a": 1.0, "b": 2.0}


def test_sparse_parameters_are_the_sparse_tables():
    tables = EmbeddingCollection([FeatureConfig("a", 100, 4, "qr"), FeatureConfig("b", 10, 4, "full")], sparse=True)
    model = nn.ModuleDict({"emb": tables, "mlp": nn.Linear(4, 1)})
    names = [name for name, _ in sparse_parameters(model)]
    assert names == ["emb.embeddings.a.weights.0", "emb.embeddings.a.weights.1", "emb.embeddings.b.weight"]
    dense = EmbeddingCollection([FeatureConfig("a", 100, 4, "qr")], sparse=False)
    assert sparse_parameters(dense) == []
