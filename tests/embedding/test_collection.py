import pytest
import torch

from compembed.embedding import (
    CCEEmbeddingBag,
    CompositionalEmbeddingBag,
    EmbeddingCollection,
    FeatureConfig,
    FullEmbeddingBag,
    SCHEMES,
    HashEmbeddingBag,
    HybridEmbeddingBag,
    PathEmbeddingBag,
    feature_configs,
)
from compembed.embedding.collection import BUILDERS

CARDINALITIES = [3, 50, 1000, 20_000]


def test_threshold_rule_compresses_only_large_features():
    configs = feature_configs(CARDINALITIES, scheme="qr", num_collisions=4)
    collection = EmbeddingCollection(configs, threshold=50)
    kinds = [type(m) for m in collection.embeddings.values()]
    assert kinds == [FullEmbeddingBag, FullEmbeddingBag, CompositionalEmbeddingBag, CompositionalEmbeddingBag]
    assert [c.scheme for c in collection.configs] == ["full", "full", "qr", "qr"]


@pytest.mark.parametrize(
    ("scheme", "kind"),
    [("full", FullEmbeddingBag), ("hashing", HashEmbeddingBag), ("qr", CompositionalEmbeddingBag),
     ("gqr", CompositionalEmbeddingBag), ("crt", CompositionalEmbeddingBag), ("path", PathEmbeddingBag),
     ("hybrid", HybridEmbeddingBag), ("cce", CCEEmbeddingBag)],
)
def test_every_scheme_builds_and_runs(scheme, kind):
    collection = EmbeddingCollection(feature_configs(CARDINALITIES, scheme=scheme, hidden_dims=(8,), hot_rows=10))
    assert all(isinstance(m, kind) for m in collection.embeddings.values())
    ids = torch.stack([torch.randint(0, n, (5,)) for n in CARDINALITIES], dim=1)
    out = collection(ids)
    assert out.shape == (5, 4, 16)
    out.sum().backward()
    assert all(p.grad is not None for p in collection.parameters())


def test_output_stack_or_cat_and_mixed_dims():
    configs = [FeatureConfig("a", 100, embedding_dim=8), FeatureConfig("b", 100, embedding_dim=4)]
    with pytest.raises(ValueError, match="output='cat'"):
        EmbeddingCollection(configs)
    collection = EmbeddingCollection(configs, output="cat")
    assert collection(torch.tensor([[1, 2], [3, 4]])).shape == (2, 12)


def test_mapping_input_with_multi_hot_bags_matches_each_module():
    configs = [FeatureConfig("user", 1000), FeatureConfig("genres", 19, scheme="full"), FeatureConfig("item", 500)]
    collection = EmbeddingCollection(configs)
    genres = (torch.tensor([1, 4, 7, 2, 3]), torch.tensor([0, 3]))
    features = {"user": torch.tensor([[5], [999]]), "genres": genres, "item": torch.tensor([[0], [42]])}
    out = collection(features)
    torch.testing.assert_close(out[:, 1], collection.embeddings["genres"](*genres))
    torch.testing.assert_close(out[:, 0], collection.embeddings["user"](features["user"]))


def test_errors_name_the_feature():
    collection = EmbeddingCollection(feature_configs([10, 20], names=["site", "app"]))
    with pytest.raises(IndexError, match=r"feature 'app' \(column 1\): id 20 at position \(0, 0\)"):
        collection(torch.tensor([[1, 20]]))
    with pytest.raises(ValueError, match=r"expected ids of shape \(B, 2\)"):
        collection(torch.tensor([[1, 2, 3]]))
    with pytest.raises(KeyError, match="'app' is missing"):
        collection({"site": torch.tensor([[1]])})
    with pytest.raises(ValueError, match="repeated"):
        EmbeddingCollection(feature_configs([10, 20], names=["x", "x"]))
    with pytest.raises(ValueError, match="feature 'c': scheme must be one of"):
        FeatureConfig("c", 10, scheme="lsh")
    with pytest.raises(ValueError, match="feature 'd': moduli must be pairwise coprime"):
        EmbeddingCollection([FeatureConfig("d", 100, scheme="crt", factors=(4, 6))])


def test_report_accounts_parameters_bytes_and_compression():
    configs = feature_configs([24, 10_131_227], names=["C6", "C3"], scheme="qr", num_collisions=4)
    collection = EmbeddingCollection(configs, threshold=200, device="meta")
    small, large = collection.report()
    assert (small.scheme, small.parameters, small.compression_ratio) == ("full", 24 * 16, 1.0)
    assert large.scheme == "qr-mult" and large.table_sizes == (2_532_807, 4)
    assert large.parameters == (2_532_807 + 4) * 16 and large.bytes == 4 * large.parameters
    assert large.full_bytes == 4 * 10_131_227 * 16
    assert collection.num_parameters == small.parameters + large.parameters
    assert collection.num_bytes == 4 * collection.num_parameters
    assert collection.compression_ratio == pytest.approx((24 + 10_131_227) / (24 + 2_532_811))
    assert "qr-mult" in collection.summary() and "total" in collection.summary()


def test_criteo_budget_matches_the_paper():
    from compembed.data.criteo_spec import KAGGLE_CARDINALITIES

    full = EmbeddingCollection(feature_configs(KAGGLE_CARDINALITIES, scheme="full"), device="meta")
    qr = EmbeddingCollection(feature_configs(KAGGLE_CARDINALITIES, scheme="qr"), threshold=200, device="meta")
    assert full.num_parameters == 33_762_577 * 16  # 540.2M
    assert round(qr.num_parameters / 1e6, 2) == 135.05


def test_schemes_come_from_one_registry():
    assert SCHEMES == tuple(BUILDERS) == ("full", "hashing", "qr", "gqr", "crt", "path", "hybrid", "robe", "dhe",
                                          "tt", "md", "cce")
    # A hybrid's cold part is built by the cold scheme's own builder, over the n - K cold ids.
    collection = EmbeddingCollection([FeatureConfig("h", 1000, scheme="hybrid", hot_rows=100, cold_scheme="hashing",
                                                    num_collisions=3)])
    module = collection.embeddings["h"]
    assert isinstance(module.cold, HashEmbeddingBag) and module.cold.partition.num_buckets == 300
    assert collection.report()[0].table_sizes == (100, 300)
