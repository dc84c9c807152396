"""One rank of the 2-process TorchRec DistributedModelParallel check (started by test_torchrec_sharding.py).

Both ranks build the same seeded compembed collection and its TorchRec form, shard the partition
tables table-wise with DMP over gloo, and save the sharded and the unsharded outputs on this rank's
half of a global batch.
"""
import os
import sys

import torch
import torch.distributed as dist


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.sharding_plan import get_default_sharders
    from torchrec.models.dlrm import DLRM

    from compembed.integrations.torchrec import CompositionalEmbeddingBagCollection, table_wise_constraints
    sys.path.insert(0, os.path.dirname(__file__))
    from _torchrec_cases import make_batch, make_collection

    torch.manual_seed(0)
    reference = CompositionalEmbeddingBagCollection.from_collection(make_collection(), one_hot=["one_hot"])
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device="cpu"), constraints=table_wise_constraints(reference)
    )
    sharders = get_default_sharders()
    plan = planner.collective_plan(reference, sharders, dist.GroupMember.WORLD)
    # Built from other weights: the reference's arrive only through load_state_dict into the shards.
    sharded = DistributedModelParallel(
        CompositionalEmbeddingBagCollection.from_collection(make_collection(seed=1), one_hot=["one_hot"]),
        device=torch.device("cpu"), plan=plan, sharders=sharders,
    )
    sharded.load_state_dict(reference.state_dict())
    kjt = make_batch(seed=1, batch_size=8, part=(rank, world))
    out = sharded(kjt)

    # The same tables inside an unchanged TorchRec DLRM, sharded as a whole model.
    def dlrm(seed: int):
        torch.manual_seed(seed)
        tables = CompositionalEmbeddingBagCollection.from_collection(make_collection(seed), one_hot=["one_hot"])
        return DLRM(embedding_bag_collection=tables, dense_in_features=13, dense_arch_layer_sizes=[16, 8],
                    over_arch_layer_sizes=[16, 1])

    reference_dlrm = dlrm(0)
    model_plan = planner.collective_plan(reference_dlrm, sharders, dist.GroupMember.WORLD)
    sharded_dlrm = DistributedModelParallel(dlrm(1), device=torch.device("cpu"), plan=model_plan, sharders=sharders)
    sharded_dlrm.load_state_dict(reference_dlrm.state_dict())
    dense = torch.randn(8, 13, generator=torch.Generator().manual_seed(2))[rank * 4 : (rank + 1) * 4]
    torch.save(
        {
            "sharded": out.values().detach(),
            "reference": reference(kjt).values().detach(),
            "dlrm_sharded": sharded_dlrm(dense, kjt).detach(),
            "dlrm_reference": reference_dlrm(dense, kjt).detach(),
            "keys": out.keys(),
            "ranks": sorted({r for params in plan.plan.values() for p in params.values() for r in p.ranks}),
            "sharding_types": sorted({p.sharding_type for params in plan.plan.values() for p in params.values()}),
            "tables": sorted(p for params in plan.plan.values() for p in params),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.barrier()  # no rank closes its connections while a peer still finishes a collective
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
