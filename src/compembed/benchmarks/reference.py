"""The reference DLRM script (facebookresearch/dlrm ``dlrm_s_pytorch.py``) timed in the bench's rounds.

The script is run as an external program from a checkout the user names (``--reference-dlrm DIR``),
in an interpreter of their choosing (``--reference-python``: it needs scikit-learn and tensorboard,
which compembed does not), never copied into this project. It trains the same DLRM step as the
``dlrm`` task's workers: random one-hot ids at the bench's cardinalities, bottom MLP
``13-512-256-64-D``, dot interaction, top MLP ``512-256-1``, BCE loss, batch ``B``, plain SGD
(its tables as ``nn.EmbeddingBag(sparse=True)``), the same thread count and malloc settings; once
with full tables and once with its own QR-mult (``--qr-flag``).

How it is timed: the script is one process per run, so each round starts it once with
``untimed + steps`` batches and ``--print-time --print-freq 1``. Its training loop then prints one
``Finished training it j/N of epoch k, T ms/it, ...`` line per iteration, where ``T`` is the
script's own clock from after the batch has been drawn from its data loader to after the
optimizer step: forward, loss, backward, update. So the random data generation (a Python loop
per id, slower than the step itself), the imports and the table initialisation are all outside
the timed part. The first ``untimed`` iterations of every run are dropped: they pay the first
touch of a fresh process (gradient buffers, allocator growth), which compembed's long-lived
workers paid in their warm-up; compembed's workers also run one untimed step per round.
"""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SCRIPT", "REFERENCE_VARIANTS", "ReferenceDLRMError", "ReferenceRun", "check_reference_dir",
           "reference_args", "parse_times", "mlp_shapes"]

SCRIPT = "dlrm_s_pytorch.py"
NUM_DENSE = 13

# name -> (description, QR?)
REFERENCE_VARIANTS: dict[str, tuple[str, bool]] = {
    "ref-dlrm-full": ("the reference DLRM script (dlrm_s_pytorch.py), full nn.EmbeddingBag tables, SGD", False),
    "ref-dlrm-qr": ("the reference DLRM script, its QR-mult (--qr-flag, QREmbeddingBag), SGD", True),
}

_TIME_LINE = re.compile(r"Finished training it (\d+)/(\d+) of epoch \d+, (-?[0-9.]+) ms/it")


class ReferenceDLRMError(ValueError):
    """The reference checkout or interpreter is unusable, or its script failed or printed no times.

    A ``ValueError`` (the user's ``--reference-dlrm``/``--reference-python`` do not work), not a
    ``RuntimeError``: the bench stops with it rather than marking the variant skipped.
    """


def check_reference_dir(directory: str | os.PathLike) -> Path:
    """``directory/dlrm_s_pytorch.py``, or a ``ReferenceDLRMError`` naming ``directory``."""
    path = Path(directory)
    if not path.is_dir():
        raise ReferenceDLRMError(f"--reference-dlrm {directory}: not a directory (expected a checkout of "
                                 f"facebookresearch/dlrm holding {SCRIPT})")
    script = path / SCRIPT
    if not script.is_file():
        raise ReferenceDLRMError(f"--reference-dlrm {directory}: no {SCRIPT} there (expected a checkout of "
                                 "facebookresearch/dlrm)")
    return script


def mlp_shapes(dim: int) -> tuple[list[int], list[int]]:
    """The bottom MLP (with its input) and the top MLP (without its input) of compembed's DLRM.

    Read from ``models.DLRM``'s defaults, which the bench's ``dlrm`` workers use; the reference
    script adds the top MLP's input itself (the interaction's width).
    """
    from ..models.dlrm import DLRM

    params = inspect.signature(DLRM).parameters
    return ([NUM_DENSE, *params["bottom_mlp"].default, dim], [*params["top_mlp"].default, 1])


def reference_args(cardinalities: Sequence[int], dim: int, batch: int, num_batches: int, *, qr: bool,
                   collisions: int = 4, threshold: int = 200, lr: float = 0.01, device: str = "cpu",
                   seed: int = 0) -> list[str]:
    """The script's command-line arguments for one run of ``num_batches`` training steps."""
    bottom, top = mlp_shapes(dim)
    args = [
        "--arch-sparse-feature-size", str(dim),
        "--arch-embedding-size", "-".join(map(str, cardinalities)),
        "--arch-mlp-bot", "-".join(map(str, bottom)),
        "--arch-mlp-top", "-".join(map(str, top)),
        "--arch-interaction-op", "dot",
        "--loss-function", "bce",
        "--data-generation", "random",
        "--rand-data-dist", "uniform",
        # one id per bag; the flag is parsed with type=bool, so any non-empty value means True
        "--num-indices-per-lookup", "1", "--num-indices-per-lookup-fixed", "1",
        "--mini-batch-size", str(batch),
        "--num-batches", str(num_batches),
        "--data-size", str(batch * num_batches),
        "--nepochs", "1",
        "--optimizer", "sgd",
        "--learning-rate", str(lr),
        "--numpy-rand-seed", str(seed),
        "--print-freq", "1", "--print-time",
        "--test-freq", "-1",
    ]
    if qr:
        args += ["--qr-flag", "--qr-operation", "mult", "--qr-collisions", str(collisions),
                 "--qr-threshold", str(threshold)]
    if device.startswith("cuda"):
        args.append("--use-gpu")
    return args


def parse_times(stdout: str, num_batches: int) -> list[float]:
    """Seconds of each training iteration, in order, from the script's ``--print-time`` lines."""
    times = {}
    for match in _TIME_LINE.finditer(stdout):
        j, total, ms = int(match[1]), int(match[2]), float(match[3])
        if total != num_batches:
            raise ReferenceDLRMError(f"the reference printed iteration {j}/{total}, expected {num_batches} iterations")
        if ms < 0:
            raise ReferenceDLRMError("the reference printed no time per iteration (was --print-time dropped?)")
        times[j] = ms / 1e3
    if sorted(times) != list(range(1, num_batches + 1)):
        raise ReferenceDLRMError(f"the reference printed times for iterations {sorted(times)}, "
                                 f"expected 1..{num_batches}"
                                 f"; the end of its output: {_tail(stdout)}")
    return [times[j] for j in range(1, num_batches + 1)]


def _tail(text: str, lines: int = 8) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip()) or "(nothing)"


@dataclass
class _Result:
    times: list[float]
    peak_rss: int
    wall_s: float


class ReferenceRun:
    """One reference variant, driven like a bench worker: ``read`` / ``send`` / ``close`` / ``kill``.

    Nothing runs between rounds; each ``{"op": "run", "steps": S, "settle": k}`` starts the script
    once with ``untimed + k + S`` batches (``untimed``: the spec's ``warmup``) and answers the
    times of the last ``S`` iterations. The peak RSS is the largest of the runs' own (from
    ``wait4``), start-up and data generation included.
    """

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.script = check_reference_dir(spec["reference_dir"])
        self.python = spec.get("reference_python") or sys.executable
        env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), PYTHONWARNINGS="ignore")
        if spec.get("malloc_tunables"):
            env.setdefault("GLIBC_TUNABLES", spec["malloc_tunables"])
        env.pop("PYTHONPATH", None)  # the reference's own environment, not compembed's
        self.env = env
        self.peak_rss = 0
        self.answers: list[dict] = []
        self.runs: list[dict] = []
        self.probed = False

    def _run(self, args: list[str]) -> tuple[str, _Result]:
        """Run the script with ``args`` in a scratch folder (its tensorboard log goes there)."""
        command = [self.python, str(self.script), *args]
        with tempfile.TemporaryDirectory(prefix="compembed-ref-dlrm-") as cwd, \
                tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            started = time.perf_counter()
            try:
                proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=cwd, env=self.env,
                                        stdin=subprocess.DEVNULL, text=True)
            except OSError as exc:
                raise ReferenceDLRMError(
                    f"--reference-python {self.python}: cannot run it ({exc.strerror or exc})") from exc
            try:
                _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - started
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if proc.returncode != 0:
            raise ReferenceDLRMError(
                f"the reference DLRM script {self.script} (--reference-dlrm {self.spec['reference_dir']}, "
                f"python {self.python}) exited with code {proc.returncode}; its stderr ends: {_tail(stderr or stdout)}")
        return stdout, _Result([], usage.ru_maxrss * 1024, wall)

    def send(self, command: dict) -> None:
        if command["op"] != "run":
            self.answers.append({"peak_rss": self.peak_rss or None, "runs": self.runs})
            return
        spec, steps = self.spec, command["steps"]
        untimed = spec.get("warmup", 2) + command.get("settle", 0)
        args = reference_args(spec["cardinalities"], spec["dim"], spec["batch"], untimed + steps,
                              qr=spec["qr"], collisions=spec["collisions"], threshold=spec["threshold"],
                              lr=spec.get("lr", 0.01), device=spec.get("device", "cpu"))
        stdout, result = self._run(args)
        times = parse_times(stdout, untimed + steps)
        self.peak_rss = max(self.peak_rss, result.peak_rss)
        self.runs.append(dict(wall_s=result.wall_s, timed_s=sum(times[untimed:]), untimed_s=sum(times[:untimed])))
        self.answers.append({"times": times[untimed:]})

    def read(self) -> dict:
        if not self.probed:  # the first read is the "ready" line: fail now on a missing import, not in round 1
            self.probed = True
            _, result = self._run(["--help"])
            return {"ready": True, "build_s": result.wall_s, "reference": str(self.script), "python": self.python}
        return self.answers.pop(0)

    def close(self) -> dict:
        self.send({"op": "quit"})
        return self.read()

    def kill(self) -> None:  # every run has ended by the time send returns
        pass
