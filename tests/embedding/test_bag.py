"""BagModule: a minimal scheme on it is nn.EmbeddingBag; the shared checks give the shared errors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compembed.embedding.bag import BagModule, check_int_in, check_positive_ints, per_distinct_id


class Table(BagModule):
    """The smallest scheme: one full table (what a new scheme's module looks like)."""

    def __init__(self, num_embeddings, embedding_dim, mode="mean", include_last_offset=False, padding_idx=None):
        super().__init__(num_embeddings, embedding_dim, mode=mode, include_last_offset=include_last_offset,
                         padding_idx=padding_idx)
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim, dtype=torch.float64))

    def embed(self, input):
        return F.embedding(input, self.weight)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_a_table_on_the_base_is_nn_embedding_bag(mode, padding_idx):
    torch.manual_seed(0)
    table = Table(10, 4, mode=mode, padding_idx=padding_idx)
    reference = nn.EmbeddingBag.from_pretrained(table.weight.detach(), mode=mode, padding_idx=padding_idx)
    ids, offsets = torch.tensor([3, 1, 3, 9, 0, 3]), torch.tensor([0, 1, 1, 4])  # an empty bag, a bag of padding
    torch.testing.assert_close(table(ids, offsets), reference(ids, offsets))
    torch.testing.assert_close(table(ids.view(2, 3)), reference(ids.view(2, 3)))
    last = Table(10, 4, mode=mode, include_last_offset=True, padding_idx=padding_idx)
    last.load_state_dict(table.state_dict())
    torch.testing.assert_close(last(ids, torch.tensor([0, 1, 1, 4, 6])), table(ids, offsets))
    assert table.num_parameters == 40 == table.full_table_parameters
    assert table.init_std == pytest.approx(1 / 30**0.5)


@pytest.mark.parametrize("args,kwargs,message", [
    ((0, 4), {}, "num_embeddings must be a positive int, got 0"),
    ((10, True), {}, "embedding_dim must be a positive int, got True"),
    ((10, 4), dict(mode="median"), "mode must be one of .*, got 'median'"),
    ((10, 4), dict(padding_idx=10), r"padding_idx must be in \[0, 10\), got 10"),
])
def test_the_common_arguments_are_checked(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Table(*args, **kwargs)


def test_the_shared_checks():
    with pytest.raises(ValueError, match=r"cache_rows must be an int in \[0, num_embeddings=5\], got 6"):
        check_int_in("cache_rows", 6, 5)
    check_int_in("cache_rows", 5, 5)
    with pytest.raises(ValueError, match=r"hidden_dims must be positive ints, got \[8, 0\]"):
        check_positive_ints("hidden_dims", (8, 0))
    check_positive_ints("hidden_dims", ())


def test_per_distinct_id_computes_each_distinct_id_once_with_the_same_values_and_gradients():
    torch.manual_seed(0)
    weight = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    seen = []

    def rows_of(ids):  # a computed vector (not a row read), recording what it was asked for
        seen.append(ids.clone())
        return torch.tanh(weight[ids] * 2.0)

    ids = torch.tensor([4, 1, 4, 4, 9, 1, 0])
    out = per_distinct_id(ids, rows_of)
    assert len(seen) == 1 and seen[0].tolist() == [0, 1, 4, 9]
    out.pow(3).sum().backward()
    grad, weight.grad = weight.grad.clone(), None
    direct = torch.tanh(weight[ids] * 2.0)
    torch.testing.assert_close(out, direct)
    direct.pow(3).sum().backward()
    torch.testing.assert_close(grad, weight.grad)
    seen.clear()
    torch.testing.assert_close(per_distinct_id(torch.tensor([3, 2]), rows_of), torch.tanh(weight[[3, 2]] * 2.0))
    assert seen[0].tolist() == [3, 2]  # all distinct: computed as given, no gather
