import pytest

from compembed.sweep.budget_report import budget_points
from compembed.sweep.methods_report import parity, plot_methods, recipe_rows, verdicts, write_methods_report


def _rows(table):
    """Rows of a hand-made results table: (method, target, [test loss per seed])."""
    out = []
    for method, target, losses in table:
        for seed, loss in enumerate(losses):
            out.append({"study": "budget", "arch": "dlrm", "method": method, "target_compression": target,
                        "seed": seed, "test_loss": loss, "val_loss": loss, "test_auc": 0.7, "table_lr": 0.05,
                        "role": "tune" if seed == 0 else "", "bytes": 1e6 / target, "compression_ratio": target})
    return out


HOLDS = [("full", 1, [0.450, 0.452, 0.448]),
         ("hashing", 16, [0.460, 0.463, 0.457]), ("planner", 16, [0.455, 0.458, 0.452]),
         ("robe", 16, [0.454, 0.459, 0.450]),  # better by 0.0007 on average: within the seed std (0.003)
         ("hashing", 256, [0.470, 0.471, 0.469]), ("dhe", 256, [0.475, 0.476, 0.474])]


def test_verdict_holds_within_the_seed_std():
    points = budget_points(_rows(HOLDS))
    result = {v.target: v for v in verdicts(points, "dlrm")}
    assert sorted(result) == [16.0, 256.0]  # full tables are the reference, not a budget
    assert result[16.0].held and result[16.0].best.method == "planner"
    assert result[256.0].held and result[256.0].best.method == "hashing"


def test_verdict_fails_beyond_the_seed_std_and_where_no_compembed_configuration_fits(tmp_path):
    table = HOLDS + [("tt", 256, [0.460, 0.461, 0.459]),  # 0.010 below hashing, std 0.001
                     ("dhe", 10000, [0.49, 0.491, 0.489])]  # no compembed configuration reaches 10,000x
    points = budget_points(_rows(table))
    result = {v.target: v for v in verdicts(points, "dlrm")}
    assert result[16.0].held
    assert not result[256.0].held
    [(point, gap)] = result[256.0].failures
    assert point.method == "tt" and gap == pytest.approx(0.010)
    assert not result[10000.0].held and result[10000.0].best is None
    report = write_methods_report(_rows(table), (0.05,), [("md", 256.0, "its smallest configuration exceeds 4 bytes")],
                                  tmp_path, "t", "pre", "hand-made").read_text()
    assert "Budgets where the target fails: 256x (hashing trick 0.47000" in report
    assert "TT-Rec 0.46000 ± 0.00100 (gap +0.01000" in report
    assert "10000x (no compembed configuration fits; DHE 0.49000" in report
    assert "- mixed dimensions at 256x: its smallest configuration exceeds 4 bytes" in report
    assert (tmp_path / "loss_vs_bytes_dlrm.png").stat().st_size > 10_000


def test_only_the_tuned_recipe_enters_the_points():
    rows = _rows(HOLDS)
    other = dict(rows[0], table_lr=0.2, test_loss=0.1, val_loss=0.9)  # full tables' losing candidate
    kept, tuned = recipe_rows(rows + [other], (0.05, 0.2))
    # Only full tables tried both candidates: the other methods' recipes are not chosen yet.
    assert tuned == {"full": 0.05}
    assert other not in kept and [r["method"] for r in kept] == ["full"] * 3
    kept, tuned = recipe_rows(rows + [other], (0.05,))
    assert set(tuned) == {"full", "hashing", "planner", "robe", "dhe"} and len(kept) == len(rows)


def test_chart_is_written_atomically(tmp_path):
    path = plot_methods(budget_points(_rows(HOLDS)), "dlrm", tmp_path / "chart.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]  # no temporary file left


def test_parity_is_the_largest_compression_within_the_seed_std_of_full_tables(tmp_path):
    table = HOLDS + [("hashing", 4, [0.451, 0.453, 0.449]),  # 0.001 above full, std 0.002: at parity
                     ("robe", 64, [0.452, 0.456, 0.448])]  # 0.002 above, std 0.004: at parity, the largest
    points = budget_points(_rows(table))
    result = parity(points, "dlrm")
    assert result["hashing"][0] == 4.0  # 16x is 0.010 above with std 0.003: not at parity
    assert result["robe"][0] == 64.0 and result["robe"][1].target == 64.0
    assert result["dhe"][0] is None and result["planner"][0] is None
    report = write_methods_report(_rows(table), (0.05,), [], tmp_path, "t", "pre", "hand-made").read_text()
    assert "| ROBE-Z | 64x | 0.45200 ± 0.00400 | +0.00200 | 16x, 64x |" in report
    assert "| DHE | none measured |  |  | 256x |" in report
