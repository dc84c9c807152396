"""Vocabularies: frequency order, per-id counts, and value <-> id maps read back from vocab.json."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from compembed.data.vocab import IdMap, ValueCounter, Vocabulary, frequency_ids, kept_ids, relabelled_counts


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 5), min_size=1, max_size=40))
def test_frequency_ids_sort_counts_descending_ties_in_value_order(counts: list[int]) -> None:
    c = np.array(counts, dtype=np.int64)
    new = frequency_ids(c)
    assert sorted(new.tolist()) == list(range(len(c)))  # a bijection
    by_new = relabelled_counts(c, new)
    assert (np.diff(by_new) <= 0).all() and sorted(by_new.tolist()) == sorted(counts)
    for a in range(len(c)):  # equal counts keep their value order
        for b in range(a + 1, len(c)):
            if c[a] == c[b]:
                assert new[a] < new[b]


def test_vocabulary_counts_and_lookup_in_both_orders() -> None:
    values = np.array([10, 20, 30, 40], dtype=np.uint32)
    counts = np.array([1, 5, 3, 1])
    raw = np.array([20, 10, 99, 30, 0, 40], dtype=np.uint32)
    missing = np.array([False, False, False, False, True, False])

    v = Vocabulary.from_counts(values, counts, min_freq=2, missing=4)
    assert v.cardinality == 4 and v.missing_id == 0 and v.rare_id == 1
    np.testing.assert_array_equal(v.counts, [4, 2, 5, 3])  # missing, rare (10 and 40), 20, 30
    np.testing.assert_array_equal(v.lookup(raw, missing), [2, 1, 1, 3, 0, 1])
    np.testing.assert_array_equal(v.values_by_id(), [20, 30])
    np.testing.assert_array_equal(kept_ids(counts, 2), [1, 2, 3, 1])

    f = Vocabulary.from_counts(values, counts, min_freq=2, missing=4, id_order="frequency")
    # by count: 20 (5), missing (4), 30 (3), rare (2)
    assert f.missing_id == 1 and f.rare_id == 3 and f.cardinality == 4
    np.testing.assert_array_equal(f.counts, [5, 4, 3, 2])
    np.testing.assert_array_equal(f.lookup(raw, missing), [0, 3, 3, 2, 1, 3])
    np.testing.assert_array_equal(f.values_by_id(), [20, 30])
    # the same rows in both orders: a relabelling
    np.testing.assert_array_equal(f.lookup(raw, missing), f.new_ids[v.lookup(raw, missing)])


def test_value_counter_merges_chunks() -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 300, 5000)
    counter = ValueCounter()
    for a in range(0, 5000, 333):
        counter.add(data[a : a + 333])
    values, counts = counter.result()
    expect_values, expect_counts = np.unique(data, return_counts=True)
    np.testing.assert_array_equal(values, expect_values)
    np.testing.assert_array_equal(counts, expect_counts)


def test_id_map_round_trip_and_special_ids() -> None:
    m = IdMap(["b", "a", "c"], missing_id=2, rare_id=0)  # ids: rare 0, b 1, missing 2, a 3, c 4
    np.testing.assert_array_equal(m.value_ids, [1, 3, 4])
    np.testing.assert_array_equal(m.ids(["a", "b", "c", None, "", "zzz"]), [3, 1, 4, 2, 2, 0])
    assert m.values_of(np.arange(5)).to_pylist() == [None, "b", None, "a", "c"]
    ids = m.ids(["c", "a", "b"])
    assert m.values_of(ids).to_pylist() == ["c", "a", "b"]
    default = IdMap(["x", "y"])  # value order: missing 0, rare 1
    np.testing.assert_array_equal(default.ids(pa.array(["y", None, "x", "q"])), [3, 0, 2, 1])
