"""The comparison over seeds that `compembed demo` prints: mean ± std, the gap to full tables and the
paired difference to a baseline, with no std or t statistic where one seed (or no spread) has none."""
from __future__ import annotations

import math
import statistics

from compembed.training.report import format_seed_table


def _run(loss: float, auc: float = 0.8) -> dict:
    memory = {"embedding_parameters": 1000, "embedding_bytes": 4000, "compression_ratio": 1.0}
    return {"arch": "dlrm", "memory": memory, "evals": {"test": {"loss": loss, "auc": auc}}, "samples_per_s": 100.0}


def _rows(table: str) -> dict[str, str]:
    return {line.split()[1]: line for line in table.splitlines() if line.startswith("dlrm")}


def test_paired_difference_and_t_over_seeds():
    full, hashing, qr = [0.440, 0.442, 0.441], [0.460, 0.459, 0.463], [0.450, 0.452, 0.449]
    runs = {"full": [_run(x) for x in full], "hashing": [_run(x) for x in hashing], "qr": [_run(x) for x in qr]}
    rows = _rows(format_seed_table(runs, baseline="hashing"))
    diffs = [a - b for a, b in zip(qr, hashing)]
    t = statistics.fmean(diffs) / (statistics.stdev(diffs) / math.sqrt(3))
    assert f"{statistics.fmean(diffs):+.5f} (t={t:+.1f}, 3/3 lower)" in rows["qr"]
    assert f"{statistics.fmean(qr):.5f} ± {statistics.stdev(qr):.5f}" in rows["qr"]
    assert f"{100 * (statistics.fmean(qr) / statistics.fmean(full) - 1):+.2f}%" in rows["qr"]
    assert "lower)" not in rows["hashing"]  # the baseline is not paired with itself


def test_one_seed_has_no_std_and_no_t():
    runs = {"full": [_run(0.44418, 0.8030)], "hashing": [_run(0.45671, 0.7861)], "qr": [_run(0.44695, 0.7990)]}
    rows = _rows(format_seed_table(runs, baseline="hashing"))
    assert "0.44695 (1 seed)" in rows["qr"] and "0.7990 (1 seed)" in rows["qr"]
    assert "-0.00976 (no t: one seed, 1/1 lower)" in rows["qr"]
    assert "nan" not in format_seed_table(runs, baseline="hashing") and "±" not in rows["qr"]


def test_equal_differences_have_no_t():
    runs = {"hashing": [_run(0.5), _run(0.75)], "qr": [_run(0.25), _run(0.5)]}  # exact in binary: equal differences
    assert "(no t: no spread, 2/2 lower)" in _rows(format_seed_table(runs, baseline="hashing"))["qr"]
