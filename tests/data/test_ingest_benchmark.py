"""The ingestion benchmark runs end to end on a tiny file and reports every figure."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from compembed.benchmarks.ingest import main


def test_ingest_benchmark_smoke(tmp_path: Path, capsys) -> None:
    out = tmp_path / "result.json"
    threads = torch.get_num_threads()
    assert main(["--lines", "6000", "--scale", "0.001", "--workdir", str(tmp_path / "w"), "--json", str(out),
                 "--rounds", "1"]) == 0
    result = json.loads(out.read_text())
    assert result["runs"]["small"]["rows"] == 1200 and result["runs"]["large"]["rows"] == 6000
    for run in result["runs"].values():
        assert run["peak_rss"] > 0 and run["seconds"] > 0 and run["distinct"] > 0
    assert result["extrapolated_kaggle"]["lines"] == 45_840_617 and result["extrapolated_kaggle"]["minutes"] > 0
    # Counting 100,000 distinct values costs at least their 16 bytes each (value + count), and the
    # extrapolation charges every unseen Kaggle value at no less than that.
    assert result["probe_distinct"] == 100_000 and result["probe_bytes_per_distinct_value"] >= 16
    unseen = 33_762_577 - result["runs"]["large"]["distinct"]
    assert result["extrapolated_kaggle"]["peak_rss_gib"] * 2**30 >= result["runs"]["large"]["peak_rss"] + 16 * unseen
    assert result["parse_rows_per_s_vectorised"] > 0 and result["parse_rows_per_s_python"] > 0
    assert result["loader_rows_per_s_b128"] > 0
    # prepare against pyarrow.csv parsing + id mapping, on the same 6,000 lines
    assert result["compare_rows"] == 6000 and result["compare_rounds"] == 1
    assert all(len(v) == 1 and v[0] > 0 for v in result["compare_seconds"].values())
    assert result["prepare_vs_arrow"] > 0 and result["parser"] in ("c", "numpy")
    assert "peak RSS" in capsys.readouterr().out
    assert not list((tmp_path / "w").iterdir())  # generated files removed without --keep
    assert torch.get_num_threads() == threads  # its one-thread timing leaves the caller's setting alone
