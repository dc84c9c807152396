import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compembed.partitions import (
    ChineseRemainder,
    GeneralizedQuotientRemainder,
    Hashing,
    Identity,
    QuotientRemainder,
    RadixPartition,
    choose_divisors,
    choose_moduli,
    integer_root,
    is_complementary,
)

FAST = settings(max_examples=60, deadline=None)


def all_classes(p):
    return p(torch.arange(p.num_embeddings))


@FAST
@given(n=st.integers(1, 3000), m=st.integers(1, 3100))
def test_quotient_remainder_is_unique_for_every_id(n, m):
    p = QuotientRemainder(n, m)
    assert p.complementary
    assert is_complementary(p, exhaustive=True)
    classes = all_classes(p)
    assert torch.equal(classes[:, 0] * m + classes[:, 1], torch.arange(n))
    assert p.table_sizes == (math.ceil(n / m), min(m, n))
    assert (classes.max(0).values < torch.tensor(p.table_sizes)).all()


@FAST
@given(n=st.integers(1, 4000), divisors=st.lists(st.integers(1, 40), min_size=1, max_size=4))
def test_generalized_qr_is_unique_when_product_covers_n(n, divisors):
    if math.prod(divisors) < n:
        with pytest.raises(ValueError, match="product"):
            GeneralizedQuotientRemainder(n, divisors)
        return
    p = GeneralizedQuotientRemainder(n, divisors)
    assert p.complementary and is_complementary(p, exhaustive=True)
    assert (all_classes(p).max(0).values < torch.tensor(p.table_sizes)).all()


@FAST
@given(n=st.integers(1, 4000), seed=st.integers(0, 10**6), k=st.integers(1, 4))
def test_chinese_remainder_is_unique_for_random_coprime_moduli(n, seed, k):
    rng = random.Random(seed)
    moduli: list[int] = []
    while len(moduli) < k:
        c = rng.randint(2, 70)
        if all(math.gcd(c, m) == 1 for m in moduli):
            moduli.append(c)
    if math.prod(moduli) < n:
        with pytest.raises(ValueError, match="product"):
            ChineseRemainder(n, moduli)
        return
    p = ChineseRemainder(n, moduli)
    assert p.complementary and is_complementary(p, exhaustive=True)


@FAST
@given(n=st.integers(1, 200_000), k=st.integers(1, 4))
def test_chosen_factors_cover_n_near_the_kth_root(n, k):
    divisors = choose_divisors(n, k)
    root = integer_root(n, k)
    assert len(divisors) == k and math.prod(divisors) >= n
    assert all(root <= d <= root + 1 for d in divisors)
    moduli = choose_moduli(n, k)
    assert len(moduli) == k and math.prod(moduli) >= n
    assert all(math.gcd(a, b) == 1 for i, a in enumerate(moduli) for b in moduli[i + 1 :])
    if k > 1:
        assert max(moduli) <= 2 * root + 2 * k + 2
    assert is_complementary(GeneralizedQuotientRemainder(n, divisors))
    assert is_complementary(ChineseRemainder(n, moduli))
    if n <= 20_000:
        assert is_complementary(ChineseRemainder(n, moduli), exhaustive=True)


@pytest.mark.parametrize("n", [0, 1, 2, 15, 16, 17, 10**18, 2**62 + 12345])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_integer_root_is_exact(n, k):
    r = integer_root(n, k)
    assert r**k <= n < (r + 1) ** k


def test_hashing_is_not_complementary():
    assert not Hashing(100, 25).complementary
    assert not is_complementary(Hashing(100, 25))
    assert not is_complementary(Hashing(100, 25), exhaustive=True)
    assert is_complementary(Hashing(100, 100)) and is_complementary(Identity(100))


def test_mismatched_quotient_and_remainder_is_detected():
    # Quotient by 13 with remainder mod 5 (a known bug elsewhere): 7 and 12 both map to (0, 2).
    p = RadixPartition(20, strides=(13, 1), moduli=(2, 5))
    assert not p.complementary
    assert not is_complementary(p)
    assert torch.equal(p(torch.tensor([7, 12])), torch.tensor([[0, 2], [0, 2]]))


def test_is_complementary_refuses_to_guess_for_large_n_without_proof():
    p = RadixPartition(10**9, strides=(7, 1), moduli=(10**9, 11))
    with pytest.raises(ValueError, match="cannot decide"):
        is_complementary(p)


def test_criteo_table_sizes():
    assert QuotientRemainder(10_131_227, 4).table_sizes == (2_532_807, 4)
    assert Hashing(10_131_227, 2_532_807).table_sizes == (2_532_807,)


BIG = 2**40


@pytest.mark.parametrize("m", [3, 4, 60, 4097, 2**20 + 7])
def test_large_ids_map_exactly(m):
    gen = torch.Generator().manual_seed(m)
    ids = torch.randint(2**24, BIG, (20_000,), generator=gen)
    ids = torch.cat([ids, torch.tensor([2**24, 2**24 + 1, BIG - 1, BIG - 2])])
    expected = torch.tensor([[x // m, x % m] for x in ids.tolist()])
    assert torch.equal(QuotientRemainder(BIG, m)(ids), expected)

    divisors = (m, 1 << 12, -(-BIG // (m << 12)))
    digits = GeneralizedQuotientRemainder(BIG, divisors)(ids)
    rebuilt = digits[:, 0] + divisors[0] * (digits[:, 1] + divisors[1] * digits[:, 2])
    assert torch.equal(rebuilt, ids)

    moduli = choose_moduli(BIG, 3)
    residues = ChineseRemainder(BIG, moduli)(ids)
    assert residues.tolist() == [[x % q for q in moduli] for x in ids.tolist()]


def test_float_division_would_have_been_wrong():
    # The reference code's (x / m).long() differs from the exact quotient above 2**24.
    x, m = torch.tensor([2**25 + 3]), 3
    assert (x.float() / m).long().item() != (2**25 + 3) // 3
    assert QuotientRemainder(2**26, m)(x)[0, 0].item() == (2**25 + 3) // 3


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: QuotientRemainder(100, 0), ValueError, "num_collisions must be >= 1"),
        (lambda: QuotientRemainder(0, 4), ValueError, "num_embeddings must be >= 1"),
        (lambda: QuotientRemainder(100, 2.5), TypeError, "num_collisions must be an int"),
        (lambda: Hashing(100, 0), ValueError, "num_buckets must be >= 1"),
        (lambda: GeneralizedQuotientRemainder(100, [10, 0]), ValueError, r"divisors\[1\] must be >= 1"),
        (lambda: GeneralizedQuotientRemainder(100, []), ValueError, "non-empty"),
        (lambda: GeneralizedQuotientRemainder(1000, [10, 9, 10]), ValueError, "product 900 < num_embeddings 1000"),
        (lambda: ChineseRemainder(100, [6, 35, 10]), ValueError, "6 and 10 share the factor 2"),
        (lambda: ChineseRemainder(1000, [7, 11, 12]), ValueError, "product 924 < num_embeddings 1000"),
        (lambda: choose_divisors(100, 0), ValueError, "k must be >= 1"),
    ],
)
def test_invalid_arguments_name_the_argument(build, error, message):
    with pytest.raises(error, match=message):
        build()


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.tensor([3, -1, 5]), r"id -1 at position 1 is out of range \[0, 100\)"),
        (torch.tensor([[3, 4], [100, 5]]), r"id 100 at position \(1, 0\) is out of range"),
        (torch.tensor([2**40]), r"id 1099511627776 at position 0"),
    ],
)
def test_out_of_range_ids_name_the_id_and_position(ids, message):
    with pytest.raises(IndexError, match=message):
        QuotientRemainder(100, 4)(ids)


def test_non_integer_ids_are_rejected():
    with pytest.raises(TypeError, match="integer tensor"):
        QuotientRemainder(100, 4)(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        QuotientRemainder(100, 4)([1, 2])


def test_classes_keep_the_input_shape_and_accept_int32():
    ids = torch.arange(24, dtype=torch.int32).view(2, 3, 4)
    out = QuotientRemainder(24, 5)(ids)
    assert out.shape == (2, 3, 4, 2) and out.dtype == torch.int64
    assert QuotientRemainder(24, 5)(torch.empty(0, dtype=torch.int64)).shape == (0, 2)
