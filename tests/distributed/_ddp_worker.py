"""Train a small DLRM for one epoch with compembed.distributed, then save the parameters (rank 0).

Run as one process (global batch = --batch rows) or under torchrun with N processes and
--batch / N rows per rank: the two must end with the same parameters.
"""
import argparse

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from compembed.data.synthetic import SyntheticConfig, SyntheticCTR
from compembed.distributed import (
    global_batch_loss, init_from_env, shutdown, sync_sparse_gradients, unwrap_model, wrap_model,
)
from compembed.models import ModelConfig, build_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--global-batch", type=int, required=True)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adagrad"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctx = init_from_env()
    data = SyntheticCTR(SyntheticConfig(num_rows=421, cardinality_scale=0.0005, seed=3))
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=8, scheme="qr", bottom_mlp=(16,), top_mlp=(16,))
    model = build_model(config, data.info, sparse=True)
    net = wrap_model(model, ctx)
    cls = torch.optim.SGD if args.optimizer == "sgd" else torch.optim.Adagrad
    optimizer = cls(model.parameters(), lr=0.5 if args.optimizer == "sgd" else 0.05)
    names = list(data.info.categorical_names)
    losses = []
    per_rank = args.global_batch // ctx.world_size
    for batch in data.loader("train", per_rank, shuffle=True, seed=7, rank=ctx.rank, world_size=ctx.world_size):
        optimizer.zero_grad(set_to_none=True)
        local = F.binary_cross_entropy_with_logits(net(batch.dense, batch.features(names)), batch.labels)
        loss, mean, count = global_batch_loss(local, len(batch), ctx)
        loss.backward()
        sync_sparse_gradients(net, ctx)
        optimizer.step()
        losses.append(mean)
    if ctx.is_main:
        state = {k: v.detach().contiguous() for k, v in unwrap_model(net).state_dict().items()}
        state["losses"] = torch.tensor(losses, dtype=torch.float64)
        save_file(state, args.out)
    shutdown(ctx)


if __name__ == "__main__":
    main()
