"""2 processes on 127.0.0.1 (gloo): TorchRec DistributedModelParallel shards the partition tables
table-wise and gives the outputs of the unsharded module, alone and inside TorchRec's DLRM."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchrec", reason="TorchRec is not installed (optional; the Makefile's install recipe adds it)")

WORKER = Path(__file__).with_name("_dmp_worker.py")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_table_wise_dmp_matches_unsharded(tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(WORKER), str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    # The plan really spreads the compressed tables whole over both ranks.
    assert ranks[0]["ranks"] == [0, 1]
    assert ranks[0]["sharding_types"] == ["table_wise"]
    assert "multi_hot__p0" in ranks[0]["tables"] and "one_hot__p1" in ranks[0]["tables"]
    for out in ranks:
        assert out["keys"] == ["multi_hot", "one_hot", "added", "concat", "hashed"]
        assert out["sharded"].shape == (4, 40)
        assert out["reference"].abs().max() > 0
        torch.testing.assert_close(out["sharded"], out["reference"], rtol=1e-5, atol=1e-6)
        assert out["dlrm_sharded"].shape == (4, 1)
        torch.testing.assert_close(out["dlrm_sharded"], out["dlrm_reference"], rtol=1e-5, atol=1e-6)
