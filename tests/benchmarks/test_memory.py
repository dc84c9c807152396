"""Peak RSS as the benchmarks read it: this process's own high-water mark, in bytes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from compembed.benchmarks.memory import peak_rss_bytes


def test_peak_rss_covers_what_is_resident_now() -> None:
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, every page written
    status = Path("/proc/self/status").read_text()
    resident = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024
    assert block.sum() == block.size
    assert peak_rss_bytes() >= resident >= 64 * 2**20


def test_a_child_reports_its_own_peak_not_its_parents() -> None:
    # ru_maxrss would give a forked-and-exec'd child the parent's RSS at fork time as a floor
    # (preexec_fn makes subprocess fork rather than vfork). The child itself imports torch (~0.3 GiB).
    block = np.ones(2**30 // 8)  # the parent holds 1 GiB
    code = "from compembed.benchmarks.memory import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               close_fds=False, preexec_fn=lambda: None).stdout)
    assert block[-1] == 1.0
    assert 0 < child < 640 * 2**20 < 2**30 < peak_rss_bytes()
