"""The one switch for value checks: eager errors on CPU, asserts in graphs, nothing for meta/fake or trusted inputs."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import compembed
from compembed import HashEmbeddingBag, trusted_inputs
from compembed.embedding import EmbeddingCollection, FusedEmbeddingCollection, feature_configs
from compembed.embedding.pooling import check_bag_inputs
from compembed.partitions import check_ids
from compembed.validation import check_mode


@pytest.fixture(autouse=True)
def _validation_back_on():
    yield
    compembed.set_validation(True)


def test_trusted_inputs_skips_the_range_check_and_restores_it():
    torch.manual_seed(0)
    bag = HashEmbeddingBag(100, 4, num_buckets=10)
    bad = torch.tensor([[3, 105]])  # out of range, yet a valid bucket: only the check can catch it
    with pytest.raises(IndexError, match=r"id 105 at position \(0, 1\) is out of range \[0, 100\)"):
        bag(bad)
    with trusted_inputs():
        assert not compembed.validation_enabled()
        out = bag(bad)
    torch.testing.assert_close(out, bag(torch.tensor([[3, 5]])))  # 105 read bucket 5, unchecked
    assert compembed.validation_enabled()
    with pytest.raises(IndexError, match="id 105"):
        bag(bad)


def test_trusted_inputs_restores_the_previous_setting_even_on_error():
    compembed.set_validation(False)
    with pytest.raises(RuntimeError, match="boom"):
        with trusted_inputs():
            raise RuntimeError("boom")
    assert not compembed.validation_enabled()  # it was off before the block
    compembed.set_validation(True)
    with pytest.raises(RuntimeError, match="boom"):
        with trusted_inputs():
            raise RuntimeError("boom")
    assert compembed.validation_enabled()


def test_set_validation_takes_a_bool():
    with pytest.raises(TypeError, match="set_validation takes a bool, got 0"):
        compembed.set_validation(0)


def test_the_switch_applies_to_offsets_and_to_the_fused_collection():
    ids, offsets = torch.tensor([1, 2, 3]), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"offsets\[0\] = 1 \(the start of bag 0\) must be 0"):
        check_bag_inputs(ids, offsets)
    with trusted_inputs():
        check_bag_inputs(ids, offsets)  # not checked
    fused = FusedEmbeddingCollection(feature_configs([10, 20], scheme="hashing", embedding_dim=4))
    with pytest.raises(IndexError, match=r"feature 'C1' \(column 0\): id 10 at row 0"):
        fused(torch.tensor([[10, 3]]))
    with trusted_inputs():
        assert fused(torch.tensor([[10, 3]])).shape == (1, 2, 4)


def test_modes():
    assert check_mode(torch.zeros(2, dtype=torch.long)) == "eager"
    assert check_mode(torch.zeros(2, dtype=torch.long, device="meta")) == "off"
    with FakeTensorMode() as mode:
        assert check_mode(mode.from_tensor(torch.zeros(2, dtype=torch.long))) == "off"
    with trusted_inputs():
        assert check_mode(torch.zeros(2, dtype=torch.long)) == "off"


def test_meta_and_fake_ids_pass_through():
    check_ids(torch.full((3,), 10**9, device="meta"), 5)  # no values to check
    check_bag_inputs(torch.zeros(4, dtype=torch.long, device="meta"), torch.tensor([3, 1], device="meta"))
    collection = EmbeddingCollection(feature_configs([100, 50], scheme="qr", embedding_dim=4), device="meta")
    assert collection(torch.zeros(5, 2, dtype=torch.long, device="meta")).shape == (5, 2, 4)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.tensor([[1, 2], [3, 4]]))
        bag = HashEmbeddingBag(100, 4, num_buckets=10)
        assert bag(fake).shape == (2, 4)


def test_dtype_and_type_checks_stay_on():
    # They cost nothing at run time, so the opt-out keeps them.
    with trusted_inputs():
        with pytest.raises(TypeError, match="ids must be an integer tensor"):
            check_ids(torch.zeros(3), 5)
        with pytest.raises(TypeError, match="ids must be a torch.Tensor, got list"):
            check_ids([1, 2], 5)


def test_inside_a_graph_a_bad_id_fails_with_a_clear_message():
    torch.manual_seed(0)
    bag = HashEmbeddingBag(100, 4, num_buckets=10)
    ids = torch.tensor([[3, 5]])
    program = torch.export.export(bag, (ids,))
    torch.testing.assert_close(program.module()(ids), bag(ids))
    with pytest.raises(RuntimeError, match=r"an id is out of range \[0, 100\)"):
        program.module()(torch.tensor([[3, 105]]))
    with trusted_inputs():  # traced without the check: no assert in the graph
        unchecked = torch.export.export(bag, (ids,))
    assert "_assert_async" in str(program.graph) and "_assert_async" not in str(unchecked.graph)
