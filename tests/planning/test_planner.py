import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from compembed.data.dataset import DatasetInfo
from compembed.embedding import EmbeddingCollection
from compembed.models import ModelConfig, build_collection
from compembed.planning import PlanError, budget_for_compression, plan_for_dataset, plan_tables

CARDS = [3, 40, 700, 20_000, 90_000]


def zipf_counts(n: int, rows: int, seed: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** 1.05
    counts = np.random.default_rng(seed).multinomial(rows, p / p.sum())
    return np.sort(counts)[::-1].copy()


COUNTS = [zipf_counts(n, 50_000, j) for j, n in enumerate(CARDS)]


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "amsgrad", "rowwise_adagrad"])
@pytest.mark.parametrize("ratio", [1, 2, 4, 16, 64, 256])
def test_plan_fits_the_budget_by_the_collections_own_count(optimizer, ratio):
    budget = budget_for_compression(CARDS, ratio, optimizer=optimizer)
    plan = plan_tables(CARDS, COUNTS, budget, optimizer=optimizer)
    collection = EmbeddingCollection(plan.configs(), device="meta")
    state = {"sgd": 0, "adagrad": 1, "amsgrad": 3, "rowwise_adagrad": 1 / 16}[optimizer]
    allocated = collection.num_bytes * (1 + state)
    assert plan.bytes == pytest.approx(allocated, abs=len(CARDS))  # per-feature rounding of 1/D state
    assert plan.bytes <= budget
    assert plan.bytes >= 0.9 * budget or ratio == 1  # leftover rows are spent, not wasted
    assert plan.compression == pytest.approx(plan.full_bytes / plan.bytes)


def test_generous_budget_gives_full_tables_and_tight_budget_compresses_the_big_features():
    assert all(f.config.scheme == "full" for f in plan_tables(CARDS, COUNTS, 10**9).features)
    plan = plan_tables(CARDS, COUNTS, budget_for_compression(CARDS, 64))
    schemes = {f.name: f.config.scheme for f in plan.features}
    assert schemes["C1"] == "full"  # 3 frequent ids: all hot
    assert schemes["C5"] == "hybrid"
    big = plan.features[4]
    assert 0 < big.hot_rows < 90_000 and big.coverage > big.hot_rows / 90_000  # hot ids carry more than their share


def test_hot_rows_go_to_the_globally_most_frequent_ids():
    plan = plan_tables(CARDS, COUNTS, budget_for_compression(CARDS, 16))
    cut_in = [c[f.hot_rows - 1] for f, c in zip(plan.features, COUNTS) if 0 < f.hot_rows < len(c)]
    cut_out = [c[f.hot_rows] for f, c in zip(plan.features, COUNTS) if 0 < f.hot_rows < len(c)]
    assert min(cut_in) >= max(cut_out)  # no id left cold is more frequent than an id given a row


def test_coverage_is_the_share_of_occurrences_on_own_rows():
    plan = plan_tables(CARDS, COUNTS, budget_for_compression(CARDS, 16))
    own = sum(c[: f.hot_rows].sum() for f, c in zip(plan.features, COUNTS))
    assert plan.coverage == pytest.approx(own / sum(c.sum() for c in COUNTS))
    looser = plan_tables(CARDS, COUNTS, budget_for_compression(CARDS, 4))
    assert looser.coverage > plan.coverage


def test_budget_below_the_minimum_names_the_minimum():
    # 4 rows of D=16 with Adagrad (128 bytes each) for 5 features: not even one hashed row each
    with pytest.raises(PlanError, match=r"below the smallest plan: 640 B \(5 rows of D=16 with adagrad state: "
                                        r"one hashed row per feature\)"):
        plan_tables(CARDS, COUNTS, 4 * 128 + 100)
    assert plan_tables(CARDS, COUNTS, 5 * 128).bytes == 5 * 128


def test_value_ordered_counts_are_refused():
    shuffled = [c.copy() for c in COUNTS]
    shuffled[3] = shuffled[3][::-1].copy()
    with pytest.raises(PlanError, match=r"feature 'C4': ids are not in frequency order .*--id-order frequency"):
        plan_tables(CARDS, shuffled, 10**6)


def test_dataset_without_counts_says_how_to_get_them():
    info = DatasetInfo(dense_names=["I1"], categorical_names=["C1"], cardinalities=[10])
    with pytest.raises(PlanError, match="no per-id training counts.*--id-order frequency"):
        plan_for_dataset(info, 10**6)


def test_plan_overrides_build_the_same_tables():
    plan = plan_tables(CARDS, COUNTS, budget_for_compression(CARDS, 16))
    info = DatasetInfo(dense_names=["I1"], categorical_names=[f"C{j + 1}" for j in range(len(CARDS))],
                       cardinalities=CARDS)
    model = ModelConfig(features=plan.overrides(), threshold=0)
    for fused in (False, True):
        tables = build_collection(model, info, fused=fused, device="meta")
        assert tables.num_bytes * 2 == plan.bytes  # adagrad state doubles it
    assert model.label().startswith("planned[")


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad"])
def test_below_every_composition_the_cold_ids_are_hashed_and_hot_ids_keep_rows(optimizer):
    row_bytes = 16 * 4 * (1 + {"adagrad": 1, "rowwise_adagrad": 1 / 16}[optimizer])
    from compembed.planning.planner import _floor_rows

    assert sum(_floor_rows(n) for n in CARDS) > 60  # the unique compositions' minimum, where step 4 starts
    budget = int(60 * row_bytes)
    plan = plan_tables(CARDS, COUNTS, budget, optimizer=optimizer)
    configs = plan.configs()
    assert {c.cold_scheme if c.scheme == "hybrid" else c.scheme for c in configs} <= {"hashing", "full"}
    assert sum(f.hot_rows for f in plan.features if f.config.scheme == "hybrid") > 0
    collection = EmbeddingCollection(configs, device="meta")
    state = {"adagrad": 1, "rowwise_adagrad": 1 / 16}[optimizer]
    assert plan.bytes == pytest.approx(collection.num_bytes * (1 + state), abs=len(CARDS)) and plan.bytes <= budget
    assert sum(sum(r.table_sizes) for r in collection.report()) <= 60
    # the hot rows are still the globally most frequent ids
    cut_in = [c[f.hot_rows - 1] for f, c in zip(plan.features, COUNTS) if 0 < f.hot_rows < len(c)]
    cut_out = [c[f.hot_rows] for f, c in zip(plan.features, COUNTS) if 0 < f.hot_rows < len(c)]
    assert min(cut_in) >= max(cut_out)
    assert "hashing/" in plan.summary()
    assert all("num_collisions" in o for o in plan.overrides().values() if o["scheme"] != "full")


def test_plans_above_the_compositions_minimum_do_not_hash():
    for ratio in (2, 16, 64):
        plan = plan_tables(CARDS, COUNTS, budget_for_compression(CARDS, ratio))
        assert all((c.cold_scheme if c.scheme == "hybrid" else c.scheme) != "hashing" for c in plan.configs())


def _allocated(collection, optimizer: str) -> int:
    """Bytes of the collection's parameters and of the state ``optimizer`` keeps for them (row-wise
    Adagrad: one value per row of each parameter, a ROBE array's rows being single values)."""
    total = 0
    for p in collection.parameters():
        state = {"sgd": 0, "adagrad": p.numel(), "amsgrad": 3 * p.numel(), "rowwise_adagrad": p.shape[0]}[optimizer]
        total += (p.numel() + state) * p.element_size()
    return total


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rowwise_adagrad"])
@pytest.mark.parametrize("ratio", [2, 16, 256, 10_000])
def test_robe_plan_meets_the_budget_by_the_collections_own_count(optimizer, ratio):
    budget = budget_for_compression(CARDS, ratio, optimizer=optimizer)
    plan = plan_tables(CARDS, COUNTS, budget, optimizer=optimizer, cold="robe")
    collection = EmbeddingCollection(plan.configs())
    assert plan.bytes == pytest.approx(_allocated(collection, optimizer), abs=len(CARDS))
    assert plan.bytes <= budget
    row_bytes = 16 * 4 * (1 + {"sgd": 0, "adagrad": 1, "rowwise_adagrad": 1 / 16}[optimizer])
    assert budget - plan.bytes < row_bytes  # the arrays take every value left: met to the value, not a knob step


def test_robe_plan_keeps_the_hot_rows_of_step_1_and_shares_the_rest_by_cold_ids():
    budget = budget_for_compression(CARDS, 64)
    plan = plan_tables(CARDS, COUNTS, budget, cold="robe")
    schemes = [(c.scheme, c.cold_scheme) for c in plan.configs()]
    assert schemes[0] == ("full", "qr") and schemes[4] == ("hybrid", "robe")  # 3 frequent ids: all hot
    # step 1 as the composition planner: half the budget's rows go to the globally most frequent ids
    rows = budget // (16 * 4 * 2)
    assert sum(f.hot_rows for f in plan.features) == rows // 2
    cut_in = [c[f.hot_rows - 1] for f, c in zip(plan.features, COUNTS) if 0 < f.hot_rows < len(c)]
    cut_out = [c[f.hot_rows] for f, c in zip(plan.features, COUNTS) if 0 < f.hot_rows < len(c)]
    assert min(cut_in) >= max(cut_out)
    # one compression level for every cold part: values per cold id equal up to rounding (the one
    # block minimum aside)
    per_id = [(c.robe_size, c.num_embeddings - c.hot_rows) for c in plan.configs()
              if c.scheme == "hybrid" and c.robe_size > 16]
    assert len(per_id) >= 2
    levels = [size / cold for size, cold in per_id]
    assert max(levels) - min(levels) < 2 / min(cold for _, cold in per_id) + 1e-9
    assert plan.overrides()["C5"] == {"scheme": "hybrid", "hot_rows": plan.features[4].hot_rows, "cold_scheme": "robe",
                                      "robe_size": plan.configs()[4].robe_size, "block_size": 16}
    assert "robe[" in plan.summary()


def test_robe_plan_below_one_block_per_feature_names_the_minimum():
    with pytest.raises(PlanError, match=r"below the smallest plan: 640 B \(one ROBE block of D=16 values with "
                                        r"adagrad state per feature\)"):
        plan_tables(CARDS, COUNTS, 5 * 128 - 1, cold="robe")
    plan = plan_tables(CARDS, COUNTS, 5 * 128, cold="robe")
    assert [c.robe_size for c in plan.configs()] == [16] * 5 and plan.bytes == 5 * 128
    with pytest.raises(PlanError, match=r"cold must be one of \('composition', 'robe'\), got 'tt'"):
        plan_tables(CARDS, COUNTS, 10**6, cold="tt")


def test_robe_plan_overrides_build_the_same_tables():
    plan = plan_tables(CARDS, COUNTS, budget_for_compression(CARDS, 256), cold="robe")
    info = DatasetInfo(dense_names=["I1"], categorical_names=[f"C{j + 1}" for j in range(len(CARDS))],
                       cardinalities=CARDS)
    model = ModelConfig(features=plan.overrides(), threshold=0)
    for fused in (False, True):
        tables = build_collection(model, info, fused=fused)
        assert _allocated(tables, "adagrad") == plan.bytes


@settings(max_examples=200, deadline=None)
@given(cold=st.lists(st.integers(0, 10**6), min_size=1, max_size=12), dim=st.sampled_from([1, 4, 16]),
       spare=st.integers(0, 10**7))
def test_robe_arrays_spend_the_values_in_proportion_with_one_block_each(cold, dim, spare):
    from compembed.planning.planner import _robe_arrays

    need = dim * sum(c > 0 for c in cold)
    values = need + spare
    arrays = _robe_arrays(cold, values, dim)
    assert all((a == 0) == (c == 0) for a, c in zip(arrays, cold))  # an array for every feature with cold ids
    assert all(a >= dim for a, c in zip(arrays, cold) if c)
    assert sum(arrays) == (values if need else 0)  # every value spent
    # Above the one-block minimum, one level L (values per cold id): a_j = floor(L c_j), and the largest
    # feature also takes what the floors left (less than one value per feature).
    free = [j for j, (a, c) in enumerate(zip(arrays, cold)) if a > dim]
    if free:
        level = (values - dim * (need // dim - len(free))) / sum(cold[j] for j in free)
        assert all(abs(arrays[j] - level * cold[j]) <= len(cold) + 1 for j in free)
