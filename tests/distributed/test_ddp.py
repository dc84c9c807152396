"""2 processes on 127.0.0.1 (gloo) with DDP + sparse-gradient sync train the same model as one
process on the same global batches (the last one split unevenly: 17 rows as 8 + 9)."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("_ddp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], nproc: int, worker: str | None = None) -> str:
    """Run a worker script (or ``-m compembed`` for the CLI) in one plain process, or under torchrun
    with ``nproc`` ranks on 127.0.0.1; returns its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    prefix = [sys.executable]
    if nproc > 1:
        prefix += ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    if worker == "-m compembed":
        target = ["-m", "compembed"]
    else:
        target = [str(WORKER if worker is None else WORKER.with_name(worker))]
    result = subprocess.run(prefix + target + args, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.mark.parametrize("optimizer", ["adagrad"])
def test_two_process_ddp_equals_one_process(tmp_path, optimizer):
    run([str(tmp_path / "one.st"), "--global-batch", "64", "--optimizer", optimizer], nproc=1)
    run([str(tmp_path / "two.st"), "--global-batch", "64", "--optimizer", optimizer], nproc=2)
    one, two = load_file(tmp_path / "one.st"), load_file(tmp_path / "two.st")
    assert one.keys() == two.keys()
    assert len(one["losses"]) == 6  # 337 train rows: 5 full global batches and one of 17
    torch.testing.assert_close(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    tables = [k for k in one if "embeddings" in k]
    assert tables, "the model has embedding tables"
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=f"parameter {key} differs")


def test_broadcast_module_gives_every_rank_rank_0s_state_whatever_the_dtype(tmp_path):
    # int16 (CCE's assignment for k = 441) is no dtype of gloo's or NCCL's collectives: it goes as bytes
    from _broadcast_worker import modules

    run([str(tmp_path)], nproc=2, worker="_broadcast_worker.py")
    expected = {k: v for k, v in modules(seed=0).state_dict().items()}
    other = modules(seed=1).state_dict()
    assert [expected[f"k{k}.assignment"].dtype for k in (100, 441, 40_000)] == [torch.uint8, torch.int16, torch.int32]
    for rank in (0, 1):
        held = load_file(tmp_path / f"rank{rank}.st")
        assert held.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(held[key], value), (rank, key)
    assert not torch.equal(other["k441.assignment"], expected["k441.assignment"])  # rank 1 did start elsewhere
