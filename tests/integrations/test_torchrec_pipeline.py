"""TorchRec's TrainPipelineSparseDist trains its DLRM over the compositional collection (CPU, gloo, world
size 1) to the same parameters as a plain training loop."""
import pytest
import torch
import torch.distributed as dist

pytest.importorskip("torchrec", reason="TorchRec is not installed (optional; the Makefile's install recipe adds it)")

from _torchrec_cases import make_batch, make_collection  # noqa: E402
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward  # noqa: E402
from torchrec.datasets.utils import Batch  # noqa: E402
from torchrec.distributed.model_parallel import DistributedModelParallel  # noqa: E402
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist  # noqa: E402
from torchrec.models.dlrm import DLRM, DLRMTrain  # noqa: E402
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper  # noqa: E402
from torchrec.optim.optimizers import in_backward_optimizer_filter  # noqa: E402

from compembed.integrations.torchrec import CompositionalEmbeddingBagCollection  # noqa: E402

LR, STEPS = 0.5, 4


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A one-process gloo group, as DistributedModelParallel needs one."""
    if dist.is_initialized():
        pytest.fail("a process group is already initialised")
    store = tmp_path_factory.mktemp("store") / "file"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def build() -> DLRMTrain:
    torch.manual_seed(0)
    tables = CompositionalEmbeddingBagCollection.from_collection(make_collection(), one_hot=["one_hot"])
    return DLRMTrain(DLRM(embedding_bag_collection=tables, dense_in_features=13, dense_arch_layer_sizes=[16, 8],
                          over_arch_layer_sizes=[16, 1]))


def batches() -> list[Batch]:
    g = torch.Generator().manual_seed(3)
    return [
        Batch(dense_features=torch.randn(8, 13, generator=g), sparse_features=make_batch(seed=s, batch_size=8),
              labels=torch.randint(0, 2, (8,), generator=g).float())
        for s in range(STEPS)
    ]


def plain_loop() -> tuple[dict, list[float]]:
    """The reference: the unsharded model, forward / backward / SGD step on each batch."""
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for batch in batches():
        optimizer.zero_grad()
        loss, _ = model(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.state_dict(), losses


@pytest.mark.parametrize("pipeline_postproc", [True, False])
def test_train_pipeline_sparse_dist_equals_plain_loop(process_group, pipeline_postproc):
    model = build()
    # The sharded tables take TorchRec's fused SGD in backward, the dense layers torch's SGD.
    apply_optimizer_in_backward(torch.optim.SGD, model.model.sparse_arch.parameters(), {"lr": LR})
    sharded = DistributedModelParallel(model, device=torch.device("cpu"))
    sharded.load_state_dict(build().state_dict())  # DMP re-initialises the shards
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(sharded.named_parameters())),
                                  lambda params: torch.optim.SGD(params, lr=LR))
    pipeline = TrainPipelineSparseDist(sharded, CombinedOptimizer([sharded.fused_optimizer, dense]),
                                       torch.device("cpu"), pipeline_postproc=pipeline_postproc)
    batch_iter, losses = iter(batches()), []
    while True:
        try:
            loss, _logits, _labels = pipeline.progress(batch_iter)  # DLRMTrain's detached outputs
        except StopIteration:
            break
        losses.append(loss.item())

    pipelined = sorted(type(m).__name__ for m in pipeline._pipelined_modules)
    postprocs = [type(m._postproc_module).__name__ for m in pipeline._pipelined_postprocs]
    if pipeline_postproc:
        # The id transform runs in the data-distribution stage, so both sharded collections are pipelined.
        assert postprocs == ["PartitionIdTransform"]
        assert pipelined == ["ShardedEmbeddingBagCollection", "ShardedEmbeddingCollection"]
    else:  # TorchRec's default: their input is the transform's output, so they run inside the forward
        assert postprocs == [] and pipelined == []

    want, want_losses = plain_loop()
    initial = build().state_dict()
    assert len(losses) == STEPS
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(want_losses))
    got = sharded.state_dict()
    assert got.keys() == want.keys()
    for name, value in want.items():
        mine = got[name].local_shards()[0].tensor if hasattr(got[name], "local_shards") else got[name]
        assert mine.shape == value.shape, name
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        torch.testing.assert_close(mine, value, rtol=1e-5, atol=1e-6, msg=name)



def test_sharded_wrapper_refuses_out_of_range_ids_of_unpartitioned_tables(process_group):
    """Sharded TorchRec looks an out-of-range id up as row 0 (fbgemm's bounds check only logs it); the
    wrapper refuses it for an unpartitioned table as for a partitioned one."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.sharding_plan import get_default_sharders
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from compembed.partitions import QuotientRemainder

    tables = [EmbeddingBagConfig(num_embeddings=10, embedding_dim=4, name="t", feature_names=["f"]),
              EmbeddingBagConfig(num_embeddings=100, embedding_dim=4, name="q", feature_names=["g"])]

    def batch(f_id: int, g_id: int = 5) -> KeyedJaggedTensor:
        return KeyedJaggedTensor.from_lengths_sync(keys=["f", "g"], values=torch.tensor([f_id, g_id]),
                                                   lengths=torch.tensor([1, 1]))

    def shard(module, names):
        constraints = {n: ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"]) for n in names}
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu"),
                                           constraints=constraints)
        return DistributedModelParallel(module, device=torch.device("cpu"),
                                        plan=planner.plan(module, get_default_sharders()))

    torch.manual_seed(0)
    plain = shard(EmbeddingBagCollection(tables), ["t", "q"])
    torch.testing.assert_close(plain(batch(10)).wait().values(), plain(batch(0)).wait().values())  # silently row 0
    wrapper = CompositionalEmbeddingBagCollection(tables, {"q": QuotientRemainder(100, 4)})
    wrapper = shard(wrapper, ["t", "q__p0", "q__p1"])
    assert wrapper(batch(9, 99)).values().shape == (1, 8)
    with pytest.raises(IndexError, match=r"feature 'f': id 10 at position 0 is out of range \[0, 10\)"):
        wrapper(batch(10))
    with pytest.raises(IndexError, match=r"feature 'g': id 100 at position 0 is out of range \[0, 100\)"):
        wrapper(batch(0, 100))
