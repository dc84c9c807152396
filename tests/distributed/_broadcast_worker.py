"""Under torchrun: every rank builds CCE modules from its own seed (assignments of uint8, int16 and int32),
then ``broadcast_module`` gives each rank rank 0's; every rank saves what it holds to ``OUT/rank<r>.st``."""
import sys

import torch
from safetensors.torch import save_file
from torch import nn

from compembed.distributed import broadcast_module, init_from_env, shutdown
from compembed.embedding.cce import CCEEmbeddingBag


def modules(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the tables' init; ``seed`` draws the hashes
    return nn.ModuleDict({f"k{k}": CCEEmbeddingBag(50_000, 8, num_rows=k, seed=seed) for k in (100, 441, 40_000)})


def main() -> None:
    ctx = init_from_env()
    held = modules(seed=ctx.rank)
    broadcast_module(held, ctx)
    save_file({k: v.contiguous() for k, v in held.state_dict().items()}, f"{sys.argv[1]}/rank{ctx.rank}.st")
    shutdown(ctx)


if __name__ == "__main__":
    main()
