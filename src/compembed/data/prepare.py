"""``prepare_criteo``: Criteo-format text files -> a prepared dataset directory (see ``store``).

Two passes, memory bounded by the vocabularies rather than the input:

1. Parse the text in blocks (``criteo.read_criteo``), write labels, dense features (``log1p``: final
   values, negatives clipped to 0, then ``log(1 + x)``, missing as 0; another transform: raw values)
   and raw 32-bit hashes to scratch files inside the temporary output directory, and count every
   feature's values (``ValueCounter``).
2. Read back the rows outside the train split and subtract their counts, so that vocabularies and
   per-id counts come from the train split only (a value seen only in validation or test data maps
   to the rare/unseen id); with a transform other than ``log1p`` gather the dense train statistics.
   Build each feature's vocabulary (values seen at least ``min_freq`` times in train; id 0 = missing,
   1 = rare, or renumbered by frequency with ``id_order="frequency"``), map the hashes to ids block by
   block into ``sparse.npy``, transform the dense values, write JSON and the counts, commit.

Splits: ``days`` cuts the rows into ``days`` equal consecutive parts (``divmod``: the first parts one
row longer), the first ``days - 1`` train, the last halved into test (first half, one row longer when
odd) and validation (second half), as DLRM does for the Kaggle file; ``random`` draws each row's
split with ``val_fraction``/``test_fraction`` from ``seed``; ``none`` puts every row in train.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..io import check_input_files
from .criteo import CriteoBlock, read_criteo
from .criteo_spec import CATEGORICAL_NAMES, DENSE_NAMES
from .dataset import ID_ORDERS, DatasetInfo
from .errors import BadLineReport, InputError
from .native import parser_name, vocab_tables
from .store import SPLIT_CODES, StoreBuilder
from .transform import DENSE_TRANSFORMS, DenseStats, apply_transforms, choose_transforms
from .vocab import ValueCounter, Vocabulary, ids_doc, sorted_counts, special_ids

__all__ = ["CriteoPrepareConfig", "PrepareResult", "prepare_criteo", "day_split", "random_split_codes",
           "write_hex_vocab_json"]

_ROWS_PER_STEP = 1 << 18  # rows per step of pass 2: bounds its working set (~80 MiB)
_SPLIT_CHUNK = 1 << 20  # rows per seeded chunk of the random split (fixed: part of the split's definition)
_HEX_CHARS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@dataclass
class CriteoPrepareConfig:
    """Options of ``prepare_criteo`` (see the module doc for the split rules)."""

    split: str = "days"
    days: int = 7
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    min_freq: int = 1
    skip_bad_lines: bool = False
    max_bad_lines: int | None = None
    block_bytes: int = 8 << 20
    write_vocab: bool = True
    workers: int = 1
    checkpoint_seconds: float = 60.0
    id_order: str = "value"
    dense_transform: str = "log1p"

    def __post_init__(self) -> None:
        if self.split not in ("days", "random", "none"):
            raise ValueError(f"split must be days, random or none, got {self.split!r}")
        if self.days < 2:
            raise ValueError(f"days must be >= 2, got {self.days}")
        if self.min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {self.min_freq}")
        if not self.checkpoint_seconds >= 0:
            raise ValueError(f"checkpoint_seconds must be >= 0, got {self.checkpoint_seconds}")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError("need val_fraction, test_fraction >= 0 with a sum below 1")
        if self.id_order not in ID_ORDERS:
            raise ValueError(f"id_order must be one of {ID_ORDERS}, got {self.id_order!r}")
        if self.dense_transform not in DENSE_TRANSFORMS:
            raise ValueError(f"dense_transform must be one of {DENSE_TRANSFORMS}, got {self.dense_transform!r}")


@dataclass
class PrepareResult:
    path: Path
    num_rows: int
    info: DatasetInfo
    report: BadLineReport
    seconds: float
    input_bytes: int
    extra: dict = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.num_rows / max(self.seconds, 1e-9)


def day_split(num_rows: int, days: int = 7) -> dict[str, tuple[int, int]]:
    """Row ranges of the day split (see the module doc)."""
    q, r = divmod(num_rows, days)
    sizes = [q + (d < r) for d in range(days)]
    train = sum(sizes[:-1])
    last = sizes[-1]
    test = (last + 1) // 2
    return {"train": (0, train), "val": (train + test, num_rows), "test": (train, train + test)}


def random_split_codes(lo: int, hi: int, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """uint8 split codes of rows ``[lo, hi)``; row ``i``'s code depends only on ``(seed, i)``."""
    out = np.empty(hi - lo, dtype=np.uint8)
    step = _SPLIT_CHUNK
    for c in range(lo // step, (hi - 1) // step + 1 if hi > lo else lo // step):
        u = np.random.default_rng([seed, 0x5917, c]).random(step)
        a, b = max(lo, c * step), min(hi, (c + 1) * step)
        uc = u[a - c * step : b - c * step]
        codes = np.full(len(uc), SPLIT_CODES["train"], dtype=np.uint8)
        codes[uc < val_fraction] = SPLIT_CODES["val"]
        codes[(uc >= val_fraction) & (uc < val_fraction + test_fraction)] = SPLIT_CODES["test"]
        out[a - lo : b - lo] = codes
    return out


def write_hex_vocab_json(path: Path, names: list[str], vocabs: list[Vocabulary]) -> None:
    """``{feature: ["8-hex-digit value of id 2", ...]}`` streamed without building Python strings."""
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    with open(path, "wb") as f:
        f.write(b"{")
        for j, (name, vocab) in enumerate(zip(names, vocabs)):
            f.write(b'%s"%s": [' % (b", " if j else b"", name.encode()))
            v = vocab.values_by_id().astype(np.uint32)
            for a in range(0, len(v), _ROWS_PER_STEP):
                part = v[a : a + _ROWS_PER_STEP]
                rows = np.empty((len(part), 11), dtype=np.uint8)
                rows[:, 0] = rows[:, 9] = ord('"')
                rows[:, 10] = ord(",")
                rows[:, 1:9] = _HEX_CHARS[(part[:, None] >> shifts) & 15]
                data = rows.tobytes()
                f.write(data[:-1] if a + _ROWS_PER_STEP >= len(v) else data)
            f.write(b"]")
        f.write(b"}\n")
        f.flush()
        os.fsync(f.fileno())


_SCRATCH = ("labels", "dense", "cats", "catmiss")
_RESULT_OPTIONS = ("skip_bad_lines", "max_bad_lines", "dense_transform")  # pass-1 options that change its output


class _Pass1:
    """Pass 1's running state (scratch files, value counts, bad lines) and its checkpoints."""

    def __init__(self, store: StoreBuilder, inputs: list[Path], cfg: CriteoPrepareConfig) -> None:
        self.store, self.cfg = store, cfg
        nf, nd = len(CATEGORICAL_NAMES), len(DENSE_NAMES)
        self.counters = [ValueCounter() for _ in range(nf)]
        self.missing_counts = np.zeros(nf + nd, dtype=np.int64)
        self.rows, self.position, self.report = 0, (0, 0, 1), BadLineReport()
        self.inputs = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in inputs]
        self.options = {k: getattr(cfg, k) for k in _RESULT_OPTIONS}
        self.files = {k: open(store.file(f"{k}.scratch"), "ab") for k in _SCRATCH}

    def add(self, block: CriteoBlock) -> None:
        f = self.files
        f["labels"].write(block.labels.tobytes())
        if self.cfg.dense_transform == "log1p":  # final values (float32)
            dense = np.log1p(np.maximum(block.dense, 0).astype(np.float64)).astype(np.float32)
        else:  # raw values (float64, NaN = missing), transformed in pass 2 with train statistics
            dense = np.where(block.dense_missing, np.nan, block.dense.astype(np.float64))
        f["dense"].write(dense.tobytes())
        f["cats"].write(block.cats.tobytes())
        f["catmiss"].write(np.packbits(block.cat_missing, axis=1).tobytes())
        if block.value_counts is None:  # counted here (a block from a reader that did not count)
            block.value_counts = [sorted_counts(block.cats[~block.cat_missing[:, j], j])
                                  for j in range(len(self.counters))]
        for j, counter in enumerate(self.counters):  # counted by read_criteo's parsing thread or process
            counter.add_counts(*block.value_counts[j])
        nf = len(self.counters)
        self.missing_counts[:nf] += block.cat_missing.sum(0)
        self.missing_counts[nf:] += block.dense_missing.sum(0)
        self.rows += len(block)

    def save(self, position: tuple[int, int, int]) -> None:
        """Checkpoint: counts (``counts-<rows>.npz``) first, then ``checkpoint.json`` naming them."""
        for fh in self.files.values():
            fh.flush()
            os.fsync(fh.fileno())
        counts_name = f"counts-{self.rows}.npz"
        arrays = {}
        for j, counter in enumerate(self.counters):
            arrays[f"v{j}"], arrays[f"c{j}"] = counter.result()
        tmp = self.store.file(f".{counts_name}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.store.file(counts_name))
        old = self._checkpoint().get("counts")
        self.store.json("checkpoint.json", {
            "inputs": self.inputs, "options": self.options, "position": list(position), "rows": self.rows,
            "missing_counts": self.missing_counts.tolist(), "report": self.report.state(), "counts": counts_name,
            "scratch_bytes": {k: fh.tell() for k, fh in self.files.items()},
        })
        if old and old != counts_name:
            self.store.file(old).unlink(missing_ok=True)

    def _checkpoint(self) -> dict:
        path = self.store.file("checkpoint.json")
        return json.loads(path.read_text()) if path.exists() else {}

    def load(self) -> bool:
        """Continue from the checkpoint in the store if it matches these inputs and options."""
        ck = self._checkpoint()
        if not ck or ck["inputs"] != self.inputs or ck["options"] != self.options:
            return False
        self.close()
        for k, size in ck["scratch_bytes"].items():  # drop what was written after the checkpoint
            with open(self.store.file(f"{k}.scratch"), "r+b") as fh:
                fh.truncate(size)
        self.files = {k: open(self.store.file(f"{k}.scratch"), "ab") for k in _SCRATCH}
        with np.load(self.store.file(ck["counts"])) as z:
            for j, counter in enumerate(self.counters):
                counter.runs = [(z[f"v{j}"], z[f"c{j}"])]
        self.missing_counts = np.array(ck["missing_counts"], dtype=np.int64)
        self.rows, self.position = ck["rows"], tuple(ck["position"])
        self.report = BadLineReport.from_state(ck["report"])
        return True

    def close(self) -> None:
        """Close every scratch file (all of them even when one fails, e.g. on a full disk; then raise)."""
        failed = None
        for fh in self.files.values():
            try:
                fh.close()
            except OSError as err:
                failed = failed or err
        if failed is not None:
            raise failed

    def finish(self) -> None:
        """Remove the scratch files and checkpoints once pass 2 has used them (and the temporary file of a
        checkpoint that failed, e.g. on a full disk)."""
        for p in self.store.tmp.iterdir():
            if p.suffix in (".scratch", ".npz", ".tmp") or p.name == "checkpoint.json":
                p.unlink()


def _read_rows(fh, row: int, m: int, width: int, dtype) -> np.ndarray:
    """Rows ``[row, row + m)`` of a scratch file of ``width`` values of ``dtype`` per row."""
    fh.seek(row * width * np.dtype(dtype).itemsize)
    return np.fromfile(fh, dtype=dtype, count=m * width).reshape(m, width)


def _held_out(
    store: StoreBuilder, n: int, cfg: CriteoPrepareConfig, raw_dense: bool, progress: bool,
) -> tuple[dict | str, dict[str, int], list[ValueCounter], np.ndarray, DenseStats | None]:
    """The split of ``n`` rows (writing ``split.npy`` for a random split) and what pass 1's scratch files
    hold outside the train split: ``(splits, sizes, value counts per feature, missing counts per feature,
    dense statistics of the train rows (raw dense scratch only, else None))``.

    Only the rows needed are read: the held-out tail of a day split, every row for a random split or for
    dense statistics.
    """
    nf, nd = len(CATEGORICAL_NAMES), len(DENSE_NAMES)
    held = [ValueCounter() for _ in range(nf)]
    held_missing = np.zeros(nf, dtype=np.int64)
    stats = DenseStats(nd) if raw_dense else None
    if cfg.split == "days":
        splits: dict | str = {k: list(v) for k, v in day_split(n, cfg.days).items()}
    else:
        splits = {"train": [0, n], "val": [n, n], "test": [n, n]}  # random: replaced by split.npy
    train_end = splits["train"][1]
    sizes = {k: b - a for k, (a, b) in splits.items()}
    random = cfg.split == "random"
    start = 0 if raw_dense or random else train_end
    codes = store.writer("split", (n,), np.uint8) if random else None
    split_counts = np.zeros(3, dtype=np.int64)
    nbytes_miss = (nf + 7) // 8
    files = {k: open(store.file(f"{k}.scratch"), "rb") for k in ("cats", "catmiss", "dense")}
    try:
        for a in tqdm(range(start, n, _ROWS_PER_STEP), desc="train counts", unit="blocks", disable=not progress):
            b = min(n, a + _ROWS_PER_STEP)
            if random:
                part = random_split_codes(a, b, cfg.seed, cfg.val_fraction, cfg.test_fraction)
                codes.write(part)
                split_counts += np.bincount(part, minlength=3)
                train = part == SPLIT_CODES["train"]
            else:
                train = np.arange(a, b) < train_end
            if not train.all():
                c = _read_rows(files["cats"], a, b - a, nf, np.uint32)[~train]
                mm = np.unpackbits(_read_rows(files["catmiss"], a, b - a, nbytes_miss, np.uint8)[~train],
                                   axis=1, count=nf).astype(bool)
                for f in range(nf):
                    held[f].add(c[~mm[:, f], f])
                held_missing += mm.sum(0)
            if stats is not None and train.any():
                stats.add(_read_rows(files["dense"], a, b - a, nd, np.float64)[train])
        if codes is not None:
            codes.close()
    finally:
        for fh in files.values():
            fh.close()
    if random:
        splits, sizes = "split.npy", {name: int(split_counts[code]) for name, code in SPLIT_CODES.items()}
    return splits, sizes, held, held_missing, stats


def prepare_criteo(
    inputs: list[str | os.PathLike], out: str | os.PathLike, config: CriteoPrepareConfig | None = None,
    overwrite: bool = False, progress: bool = True, resume: bool = False,
) -> PrepareResult:
    """Preprocess Criteo-format files ``inputs`` (plain or gzip, in order) into the dataset ``out``.

    Raises ``InputError`` on the first bad line (or, with ``skip_bad_lines``, when more than
    ``max_bad_lines`` lines are bad or no valid line is left); ``FileExistsError`` if ``out`` exists and
    not ``overwrite``. The output appears atomically when everything is written.

    Pass 1 checkpoints every ``checkpoint_seconds`` and at its end into ``<out>.partial``, which an
    interrupted run (Ctrl-C or a kill) or an I/O error (``OSError``: a full disk, say) leaves behind:
    ``resume=True`` continues from the last checkpoint when the inputs (paths, sizes, modification times)
    and options are the same, and gives the same dataset as an uninterrupted run; otherwise the stale
    directory is discarded and the run starts over.
    """
    cfg = config or CriteoPrepareConfig()
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("no input files")
    check_input_files(inputs)
    t0 = time.perf_counter()
    total_bytes = sum(p.stat().st_size for p in inputs)
    nf, nd = len(CATEGORICAL_NAMES), len(DENSE_NAMES)
    with StoreBuilder(out, overwrite=overwrite, resumable=True) as store:
        # ---- pass 1: parse, transform dense, stash hashes, count values (checkpointed)
        state = _Pass1(store, inputs, cfg)
        if store.resumed and not (resume and state.load()):
            state.close()
            store.clear()  # a stale partial directory (not resumed, or from other inputs or options)
            state = _Pass1(store, inputs, cfg)
        report = state.report
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="parse", disable=not progress)
        last_checkpoint = time.monotonic()
        block, too_many = None, False
        try:
            blocks = read_criteo(inputs, cfg.block_bytes, report if cfg.skip_bad_lines else None,
                                 on_progress=bar.update, workers=cfg.workers, start=state.position,
                                 sync_every=cfg.checkpoint_seconds, count_values=True)
            for block in blocks:
                state.add(block)
                bar.set_postfix(rows=state.rows, bad=report.total, refresh=False)
                too_many = cfg.max_bad_lines is not None and report.total > cfg.max_bad_lines
                if too_many:
                    break
                if block.synced and time.monotonic() - last_checkpoint >= cfg.checkpoint_seconds:
                    state.save(block.resume_at)
                    last_checkpoint = time.monotonic()
            if block is not None and not too_many:
                state.save(block.resume_at)  # the end of pass 1: an I/O error in pass 2 resumes there
        finally:
            bar.close()
            state.close()
        counters, missing_counts, n = state.counters, state.missing_counts, state.rows
        if too_many:  # named by the file whose lines passed the limit (the report lists the others)
            raise InputError(str(inputs[block.resume_at[0]]), 0, 0, "too_many_bad_lines",
                             f"more than {cfg.max_bad_lines} bad lines (--max-bad-lines):\n{report.summary()}")
        if n == 0:
            raise InputError(", ".join(map(str, inputs)), 0, 0, "empty_dataset",
                             "no valid lines" + (f"\n{report.summary()}" if report.total else ""))

        # ---- splits; train-split value counts (held-out rows subtracted) and dense statistics
        raw_dense = cfg.dense_transform != "log1p"
        splits, sizes, held, held_missing, stats = _held_out(store, n, cfg, raw_dense, progress)
        train_missing = missing_counts[:nf] - held_missing
        distinct, vocabs = [], []
        for f in range(nf):
            values, counts = counters[f].result()
            distinct.append(len(values))
            held_values, held_counts = held[f].result()
            counts[np.searchsorted(values, held_values)] -= held_counts  # held-out values are distinct, all counted
            vocabs.append(Vocabulary.from_counts(values, counts, cfg.min_freq, int(train_missing[f]), cfg.id_order))
            counters[f] = held[f] = None  # free the counts as we go
        transforms = choose_transforms(cfg.dense_transform, stats, nd)

        # ---- pass 2: ids, dense transforms
        scratch = {k: open(store.file(f"{k}.scratch"), "rb") for k in _SCRATCH}
        tables = vocab_tables([v.values for v in vocabs])
        nbytes_miss = (nf + 7) // 8
        with store.writer("sparse", (n, nf), np.int32) as sparse, store.writer("dense", (n, nd), np.float32) as dense, \
                store.writer("labels", (n,), np.uint8) as labels:
            for a in tqdm(range(0, n, _ROWS_PER_STEP), desc="map ids", unit="blocks", disable=not progress):
                m = min(n, a + _ROWS_PER_STEP) - a
                c = np.fromfile(scratch["cats"], dtype=np.uint32, count=m * nf).reshape(m, nf)
                mm = np.unpackbits(np.fromfile(scratch["catmiss"], dtype=np.uint8, count=m * nbytes_miss)
                                   .reshape(m, nbytes_miss), axis=1, count=nf).astype(bool)
                if tables is None:
                    ids = np.empty((m, nf), dtype=np.int32)
                    for f in range(nf):
                        ids[:, f] = vocabs[f].lookup(c[:, f], mm[:, f])
                else:  # the same ids by hash tables (see native.py)
                    ids = tables.lookup(c, mm)
                    for f in range(nf):
                        if vocabs[f].new_ids is not None:
                            ids[:, f] = vocabs[f].relabel(ids[:, f])
                sparse.write(ids)
                if raw_dense:
                    dense.write(apply_transforms(transforms, np.fromfile(scratch["dense"], dtype=np.float64,
                                                                         count=m * nd).reshape(m, nd)))
                else:
                    dense.write(np.fromfile(scratch["dense"], dtype=np.float32, count=m * nd).reshape(m, nd))
                labels.write(np.fromfile(scratch["labels"], dtype=np.uint8, count=m))
        for fh in scratch.values():
            fh.close()
        state.finish()
        info = DatasetInfo(dense_names=list(DENSE_NAMES), categorical_names=list(CATEGORICAL_NAMES),
                           cardinalities=[v.cardinality for v in vocabs], split_sizes=sizes,
                           counts={name: v.counts for name, v in zip(CATEGORICAL_NAMES, vocabs)}, id_order=cfg.id_order)
        if cfg.write_vocab:
            write_hex_vocab_json(store.file("vocab.json"), CATEGORICAL_NAMES, vocabs)
        extra = {
            "source": {"kind": "criteo", "files": [str(p) for p in inputs], "bytes": total_bytes},
            "preprocessing": {**asdict(cfg), "dense": "per column, see dense_transforms (missing -> 0)",
                              "ids": ids_doc(cfg.id_order, "hash")},
            "dense_transforms": {name: t.to_dict() for name, t in zip(DENSE_NAMES, transforms)},
            "special_ids": special_ids(CATEGORICAL_NAMES, vocabs),
            "distinct_values": dict(zip(CATEGORICAL_NAMES, distinct)),
            "missing_counts": dict(zip(CATEGORICAL_NAMES + DENSE_NAMES, map(int, missing_counts))),
            "bad_lines": report.to_dict(),
            "parser": parser_name(),  # "c" (native.py) or "numpy" (no C compiler, or COMPEMBED_PARSER=numpy)
        }
        path = store.commit(info, n, splits, **extra)
    seconds = time.perf_counter() - t0
    return PrepareResult(path, n, info, report, seconds, total_bytes, extra)
