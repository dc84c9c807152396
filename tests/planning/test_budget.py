import pytest

from compembed.embedding import EmbeddingCollection, FeatureConfig
from compembed.planning import feature_bytes, format_bytes, parse_bytes, state_factor

CONFIGS = [
    FeatureConfig("full", 1000, scheme="full"),
    FeatureConfig("hash", 1000, scheme="hashing", num_collisions=7),
    FeatureConfig("qr", 100_003, scheme="qr", num_collisions=60),
    FeatureConfig("qr_add", 5000, scheme="qr", operation="add", num_collisions=3),
    FeatureConfig("gqr", 100_003, scheme="gqr", num_partitions=3),
    FeatureConfig("gqr_f", 1000, scheme="gqr", factors=(10, 10, 10)),
    FeatureConfig("crt", 100_003, scheme="crt", num_partitions=2),
    FeatureConfig("hybrid", 100_003, scheme="hybrid", hot_rows=500, cold_scheme="qr", num_collisions=9),
    FeatureConfig("hybrid_gqr", 100_003, scheme="hybrid", hot_rows=17, cold_scheme="gqr", num_partitions=3),
    FeatureConfig("hybrid_all_hot", 50, scheme="hybrid", hot_rows=50),
    FeatureConfig("hybrid_hash", 9000, scheme="hybrid", hot_rows=10, cold_scheme="hashing", num_collisions=4),
    FeatureConfig("tt", 100_003, scheme="tt", tt_rank=6, tt_cache_rows=100),
    FeatureConfig("md", 100_003, scheme="md", md_alpha=0.5, md_blocks=5, md_base_dim=6),
]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
@pytest.mark.parametrize("dim", [16, 8])
def test_closed_form_bytes_equal_the_allocated_collection(config, dim):
    import dataclasses

    config = dataclasses.replace(config, embedding_dim=dim)
    collection = EmbeddingCollection([config], device="meta")
    assert feature_bytes(config) == collection.num_bytes
    assert feature_bytes(config, "adagrad") == 2 * collection.num_bytes
    assert feature_bytes(config, "amsgrad") == 4 * collection.num_bytes
    assert feature_bytes(config, "rowwise_adagrad") == collection.num_bytes + collection.num_bytes // dim


def test_state_factors():
    assert state_factor("sgd", 16) == 0 and state_factor("adagrad", 16) == 1
    assert state_factor("adam", 16) == 2 and state_factor("rowwise_adagrad", 16) == 1 / 16
    with pytest.raises(ValueError, match="optimizer must be one of"):
        state_factor("lamb", 16)


def test_parse_and_format_bytes():
    assert parse_bytes("64MiB") == 64 * 2**20
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("200000") == 200_000
    assert parse_bytes(" 2 kib ") == 2048
    for bad in ("64 apples", "-3MiB", "0", "MiB", ""):
        with pytest.raises(ValueError, match="budget"):
            parse_bytes(bad)
    assert format_bytes(812) == "812 B"
    assert format_bytes(64 * 2**20) == "64.0 MiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"


@pytest.mark.parametrize("method", ["hashing", "qr", "gqr"])
@pytest.mark.parametrize("ratio", [4, 16, 64])
def test_uniform_methods_are_sized_close_to_the_budget(method, ratio):
    from compembed.data.criteo_spec import KAGGLE_CARDINALITIES
    from compembed.planning import budget_for_compression, match_budget

    cards = [max(4, int(c * 0.05)) for c in KAGGLE_CARDINALITIES]
    budget = budget_for_compression(cards, ratio)
    features, size, knob = match_budget(method, cards, budget)
    configs = [FeatureConfig(f"C{j + 1}", n, **features[f"C{j + 1}"]) for j, n in enumerate(cards)]
    assert size == sum(feature_bytes(c, "adagrad") for c in configs) == 2 * EmbeddingCollection(configs, device="meta").num_bytes
    assert 0.9 * budget <= size <= budget
    assert all(c.scheme == "full" for c in configs if c.num_embeddings <= 200)


def test_what_the_closed_form_does_not_cover_is_refused():
    for config in (FeatureConfig("p", 1000, scheme="path"), FeatureConfig("c", 1000, scheme="qr", operation="concat"),
                   FeatureConfig("h", 1000, scheme="hybrid", hot_rows=10, cold_scheme="qr", operation="concat")):
        with pytest.raises(ValueError, match=f"feature '{config.name}': .*count them on the module"):
            feature_bytes(config)


HASHED = [
    FeatureConfig("robe", 100_003, scheme="robe", robe_size=12_345, block_size=4),
    FeatureConfig("robe_derived", 5000, scheme="robe", num_collisions=7, robe_signs=True),
    FeatureConfig("dhe", 100_003, scheme="dhe", dhe_hashes=32, dhe_hidden=(24, 12)),
    FeatureConfig("dhe_bn", 77, scheme="dhe", dhe_hashes=6, dhe_hidden=(10,), dhe_batchnorm=True),
]


@pytest.mark.parametrize("config", HASHED, ids=[c.name for c in HASHED])
def test_closed_form_bytes_of_robe_and_dhe_equal_the_allocated_collection(config):
    collection = EmbeddingCollection([config], device="meta")
    params = list(collection.parameters())
    assert feature_bytes(config) == collection.num_bytes
    assert feature_bytes(config, "adagrad") == 2 * collection.num_bytes
    assert feature_bytes(config, "amsgrad") == 4 * collection.num_bytes
    # row-wise Adagrad: one accumulator per row of each parameter (a 1-D parameter: per value)
    assert feature_bytes(config, "rowwise_adagrad") == collection.num_bytes + 4 * sum(p.shape[0] for p in params)


@pytest.mark.parametrize("method", ["robe", "dhe"])
@pytest.mark.parametrize("ratio,threshold", [(4, 200), (64, 200), (1000, 200), (10_000, 0)])
def test_robe_and_dhe_are_sized_to_the_budget(method, ratio, threshold):
    import dataclasses

    from compembed.data.criteo_spec import KAGGLE_CARDINALITIES
    from compembed.planning import budget_for_compression, match_budget

    cards = [max(4, int(c * 0.05)) for c in KAGGLE_CARDINALITIES]
    budget = budget_for_compression(cards, ratio)
    features, size, knob = match_budget(method, cards, budget, threshold=threshold)
    configs = [FeatureConfig(f"C{j + 1}", n, **features[f"C{j + 1}"]) for j, n in enumerate(cards)]
    assert size == sum(feature_bytes(c, "adagrad") for c in configs) == 2 * EmbeddingCollection(configs, device="meta").num_bytes
    assert size <= budget and all(c.scheme == "full" for c in configs if c.num_embeddings <= threshold)
    if method == "robe":  # to the value: one more value (8 bytes with Adagrad) would not fit
        assert budget - size < 8 and {c.scheme for c in configs if c.num_embeddings > threshold} == {"robe"}
    else:  # the widest that fits: the next even width does not
        wider = [dataclasses.replace(c, dhe_hashes=knob + 2, dhe_hidden=(knob + 2,)) if c.scheme == "dhe" else c
                 for c in configs]
        assert sum(feature_bytes(c, "adagrad") for c in wider) > budget
        assert all(c.dhe_hashes == knob for c in configs if c.scheme == "dhe")


def test_a_budget_below_the_smallest_robe_or_dhe_is_refused():
    from compembed.planning import match_budget

    cards = [10_000, 5000, 300]
    for method in ("robe", "dhe"):
        assert match_budget(method, cards, 300) is None
    # robe's smallest: one block (D = 16 values) per feature, 2 x 4 bytes each with Adagrad
    assert match_budget("robe", cards, 3 * 16 * 8, threshold=0)[1] == 3 * 16 * 8
    assert match_budget("robe", cards, 3 * 16 * 8 - 1, threshold=0) is None


@pytest.mark.parametrize("ratio", [4, 16, 48])
def test_cce_is_sized_to_the_budget_with_its_index_bytes(ratio):
    from compembed.data.criteo_spec import KAGGLE_CARDINALITIES
    from compembed.embedding.cce import cce_index_bytes
    from compembed.planning import budget_for_compression, match_budget

    cards = [max(4, int(c * 0.05)) for c in KAGGLE_CARDINALITIES]
    budget = budget_for_compression(cards, ratio)
    features, size, knob = match_budget("cce", cards, budget)
    configs = [FeatureConfig(f"C{j + 1}", n, **features[f"C{j + 1}"]) for j, n in enumerate(cards)]
    collection = EmbeddingCollection(configs, device="meta")
    index = sum(cce_index_bytes(c.num_embeddings, c.cce_columns, c.cce_k) for c in configs if c.scheme == "cce")
    assert index > 0 and sum(r.index_bytes for r in collection.report()) == index
    # Adagrad doubles the tables' bytes, not the index bytes (no optimizer state)
    assert size == sum(feature_bytes(c, "adagrad") for c in configs) == 2 * collection.num_bytes - index
    assert 0.99 * budget <= size <= budget  # the bytes left go to the largest features' rows
    assert all(c.scheme == "full" for c in configs if c.num_embeddings <= 200)
    assert {c.scheme for c in configs if c.num_embeddings > 200} == {"cce"}


def test_a_budget_below_the_cce_index_bytes_is_refused():
    from compembed.embedding.cce import cce_index_bytes
    from compembed.planning import match_budget

    cards = [10_000, 5000]
    # the smallest CCE: one row per table (2 x 2 rows of D/2 = 8 values), plus a byte per id and column
    smallest = sum(2 * 16 * 4 * 2 + cce_index_bytes(n, 2, 1) for n in cards)
    assert smallest == 2 * 256 + 15_000 * 2 + 2 * (16 * 2 + 8)
    assert match_budget("cce", cards, smallest, threshold=0)[1] == smallest
    assert match_budget("cce", cards, smallest - 1, threshold=0) is None


def test_small_features_are_compressed_only_where_their_full_tables_leave_nothing_that_fits():
    from compembed.data.synthetic import scaled_cardinalities
    from compembed.planning import budget_for_compression, match_budget

    cards = scaled_cardinalities(0.05)  # the methods study's features: 15 of 26 have <= 200 categories
    small_full = sum(n for n in cards if n <= 200) * 16 * 4 * 2
    budget = budget_for_compression(cards, 10_000)
    assert small_full > budget  # their full tables alone exceed a 10,000x budget
    for method in ("hashing", "robe", "dhe"):
        features, size, _ = match_budget(method, cards, budget)
        configs = [FeatureConfig(f"C{j + 1}", n, **features[f"C{j + 1}"]) for j, n in enumerate(cards)]
        assert size == sum(feature_bytes(c, "adagrad") for c in configs) <= budget
        assert any(c.scheme != "full" for c in configs if c.num_embeddings <= 200)
    assert match_budget("qr", cards, budget) is None  # QR's smallest (2 sqrt(n) rows) exceeds it even so
    # where the threshold leaves a fit, small features keep full tables, as before
    features, _, _ = match_budget("hashing", cards, budget_for_compression(cards, 1000))
    assert all(features[f"C{j + 1}"]["scheme"] == "full" for j, n in enumerate(cards) if n <= 200)
