"""Ingestion benchmark: preprocess a generated Criteo-format file, report rows/s and peak RSS.

Run ``python -m compembed.benchmarks.ingest [--lines 5000000]``. Steps:

1. Generate two Criteo-format text files with the synthetic generator at ``--scale`` (1.0 = the
   Kaggle cardinalities): the first ``lines/5`` lines and all ``--lines`` lines (not timed).
2. Preprocess each with ``prepare_criteo`` in a fresh process (so its peak RSS is its own) and
   record rows/s, peak RSS and the distinct values seen.
3. Extrapolate to the 45,840,617-line Kaggle file: time = lines / rows-per-second of the large run
   (parsing is linear in lines). Memory: the only state that grows with the input is the value
   counts and vocabularies, so the large run's peak RSS plus, for each of the Kaggle file's
   33,762,577 distinct values not seen here, the larger of two per-value costs: the slope between
   the two runs, and what counting as many distinct values as the largest Kaggle feature costs in a
   fresh process (merge peaks included; the runs' peaks are mostly fixed costs, so their slope
   alone can be far too low).
4. Baselines measured in the same run: plain per-line Python parsing (``str.split``, ``int``,
   ``int(x, 16)``) against ``parse_block`` on the same first 200,000 lines, and the batch loader on the
   prepared output beside one-thread DLRM training steps (hashing and QR-mult, 4 collisions, threshold 200, SGD
   with sparse gradients, batch 128) on its batches; and ``prepare`` against ``pyarrow.csv`` parsing plus
   id mapping (``compare_with_arrow``) on the first ``--compare-lines`` lines, in interleaved rounds.

``--compare FILE`` runs only that comparison, on a given file (e.g. the real Criteo sample).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path


from ..data.criteo_spec import KAGGLE_CARDINALITIES, KAGGLE_LINES
from .memory import peak_rss_bytes

KAGGLE_DISTINCT = sum(KAGGLE_CARDINALITIES)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (parse workers)."""
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def _worker(args: argparse.Namespace) -> int:
    from ..data.prepare import CriteoPrepareConfig, prepare_criteo

    base, cpu0 = peak_rss_bytes(), _cpu_seconds()
    r = prepare_criteo([args.input], args.out, CriteoPrepareConfig(write_vocab=True, workers=args.workers),
                       overwrite=True, progress=False)
    cpu = _cpu_seconds() - cpu0
    print(json.dumps({"rows": r.num_rows, "seconds": r.seconds, "cpu_seconds": cpu, "peak_rss": peak_rss_bytes(),
                      "start_rss": base,
                      "distinct": sum(r.extra["distinct_values"].values()), "bytes": r.input_bytes}))
    return 0


def _probe_counter(distinct: int, chunk: int = 1 << 20) -> int:
    """Peak RSS bytes that counting ``distinct`` distinct values adds, merges included.

    Runs in a fresh process: one ``ValueCounter`` fed ``distinct`` distinct int64 values in chunks
    (as ``prepare`` feeds one feature block by block), then its final merge.
    """
    import numpy as np

    from ..data.vocab import ValueCounter

    base = peak_rss_bytes()
    counter = ValueCounter()
    rng = np.random.default_rng(0)
    for start in range(0, distinct, chunk):
        block = np.arange(start, min(start + chunk, distinct), dtype=np.int64) * 2654435761 % (1 << 61)
        counter.add(rng.permutation(block))
    values, counts = counter.result()
    assert len(values) == distinct and counts.sum() == distinct
    return peak_rss_bytes() - base


def _parse_rates(path: Path, lines: int, repeats: int = 3) -> dict:
    """Rows/s parsing the same first ``lines`` lines (in memory) with ``parse_block`` and with a plain
    per-line Python parser (split, int, int(x, 16), log1p; no validation beyond ``int``), alternated
    ``repeats`` times and the best of each kept, so both see the same machine load."""
    from ..data.criteo import parse_block

    with open(path, "rb") as f:
        data = b"".join(line for _, line in zip(range(lines), f))
    text = data.decode().splitlines()
    step = 8 << 20
    blocks, a = [], 0
    while a < len(data):
        b = data.rfind(b"\n", a, a + step) + 1 if a + step < len(data) else len(data)
        blocks.append(data[a:b])
        a = b

    def vectorised() -> None:
        for block in blocks:
            parse_block(block, str(path), 1)

    def python() -> None:
        for line in text:
            fields = line.split("\t")
            int(fields[0])
            [math.log1p(max(int(x), 0)) if x else 0.0 for x in fields[1:14]]
            [int(x, 16) if x else -1 for x in fields[14:]]

    best = {"vectorised": math.inf, "python": math.inf}
    for _ in range(repeats):
        for name, fn in (("vectorised", vectorised), ("python", python)):
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return {f"parse_rows_per_s_{k}": len(text) / v for k, v in best.items()}


def _arrow_parse_and_map(path: Path) -> int:
    """The baseline: ``pyarrow.csv.read_csv`` of the whole file (typed columns: label and I1..I13
    integers, C1..C26 strings, empty = null; pyarrow's defaults otherwise, threads included), then each
    categorical column mapped to ids as ``prepare`` numbers them (0 = missing, 2.. = the distinct values
    in sorted order) with pyarrow's hash-based ``index_in``. Returns the rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    from ..data.criteo_spec import CATEGORICAL_NAMES, DENSE_NAMES

    names = ["label"] + DENSE_NAMES + CATEGORICAL_NAMES
    types = {"label": pa.int8(), **{n: pa.int64() for n in DENSE_NAMES}, **{n: pa.string() for n in CATEGORICAL_NAMES}}
    table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(column_names=names),
                          parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
                          convert_options=pcsv.ConvertOptions(column_types=types, null_values=[""],
                                                              strings_can_be_null=True))
    for name in CATEGORICAL_NAMES:
        col = table.column(name)
        values = pc.unique(col).drop_null()
        values = values.take(pc.sort_indices(values))
        ids = pc.fill_null(pc.add(pc.index_in(col, value_set=values), 2), 0)
        np.asarray(ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids)
    return table.num_rows


def compare_with_arrow(path: Path, rounds: int = 3, workdir: Path | None = None) -> dict:
    """Rows/s of ``prepare_criteo`` on ``path`` (compiled fast paths, and the NumPy reference paths) and of
    ``pyarrow.csv`` parsing plus id mapping (``_arrow_parse_and_map``) on the same file, in ``rounds``
    interleaved rounds (the order rotated each round) in this process, so that all three see the same
    machine load; medians and their ratios."""
    import statistics
    import tempfile

    from ..data import native
    from ..data.prepare import CriteoPrepareConfig, prepare_criteo

    work = Path(tempfile.mkdtemp(dir=workdir))
    try:
        def prepare() -> int:
            return prepare_criteo([path], work / "prepared", CriteoPrepareConfig(), overwrite=True,
                                  progress=False).num_rows

        def prepare_numpy() -> int:
            with native.disabled():
                return prepare()

        runs = {"prepare": prepare, "prepare_numpy": prepare_numpy, "arrow": lambda: _arrow_parse_and_map(path)}
        order = list(runs)
        seconds: dict[str, list[float]] = {k: [] for k in runs}
        rows = {}
        for r in range(rounds):
            for name in order[r % 3:] + order[: r % 3]:
                t = time.perf_counter()
                rows[name] = runs[name]()
                seconds[name].append(time.perf_counter() - t)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    if len(set(rows.values())) != 1:
        raise RuntimeError(f"the runs read different row counts: {rows}")
    n = rows["arrow"]
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {"compare_rows": n, "compare_rounds": rounds, "compare_seconds": seconds, "parser": native.parser_name(),
            **{f"compare_rows_per_s_{k}": n / v for k, v in med.items()},
            "prepare_vs_arrow": med["arrow"] / med["prepare"],
            "prepare_vs_numpy": med["prepare_numpy"] / med["prepare"]}


def _print_compare(c: dict) -> None:
    print(f"same {c['compare_rows']:,} lines, {c['compare_rounds']} interleaved rounds, medians: prepare "
          f"({c['parser']} parser) {c['compare_rows_per_s_prepare']:,.0f} rows/s, prepare with the NumPy paths "
          f"{c['compare_rows_per_s_prepare_numpy']:,.0f} rows/s, pyarrow.csv parsing + id mapping "
          f"{c['compare_rows_per_s_arrow']:,.0f} rows/s; prepare / pyarrow {c['prepare_vs_arrow']:.2f}x, "
          f"prepare / NumPy paths {c['prepare_vs_numpy']:.2f}x", flush=True)


def _loader_vs_training(path: Path, batches: int) -> dict:
    """Steady-state loader rows/s (shuffled train split) beside DLRM training rows/s on its batches."""
    import torch

    from ..data import open_dataset

    ds = open_dataset(path)
    out = {}
    for bs in (128, 2048):
        it = iter(ds.loader("train", bs, shuffle=True, seed=0))
        next(it)  # the epoch's permutation is drawn here
        t = time.perf_counter()
        n = sum(len(b) for _, b in zip(range(batches), it))
        out[f"loader_rows_per_s_b{bs}"] = n / (time.perf_counter() - t)
    names = ds.info.categorical_names
    batch_list = [b for _, b in zip(range(12), ds.loader("train", 128, shuffle=True, seed=1))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, like the loader (and a shared machine's OpenMP threads can thrash)
    try:
        for scheme in ("hashing", "qr"):
            out[f"dlrm_{scheme}_train_rows_per_s_b128"] = _train_rate(ds, scheme, batch_list, names)
    finally:
        torch.set_num_threads(threads)  # callers in the same process keep their setting
    return out


def _train_rate(ds, scheme: str, batch_list: list, names: list[str]) -> float:
    """Rows/s of DLRM training steps (batch 128) with ``scheme`` tables, after one warm-up step."""
    import torch

    from ..models.factory import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(scheme=scheme, num_collisions=4, threshold=200), ds.info, sparse=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(b) -> None:
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(b.dense, b.features(names)), b.labels).backward()
        opt.step()

    step(batch_list[0])
    t = time.perf_counter()
    for b in batch_list[1:]:
        step(b)
    return 128 * (len(batch_list) - 1) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compembed.benchmarks.ingest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=5_000_000, help="lines of the large generated file (default: 5M)")
    p.add_argument("--scale", type=float, default=1.0, help="synthetic cardinality scale (default: 1.0 = Kaggle)")
    p.add_argument("--workdir", default="runs/bench_ingest", help="where files are generated (default: %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--workers", type=int, default=1, help="parsing processes of prepare (default: 1)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--compare", metavar="FILE", default=None,
                   help="only compare prepare with pyarrow.csv parsing + id mapping on this Criteo-format file")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the comparison (default: 3)")
    p.add_argument("--compare-lines", type=int, default=300_000,
                   help="lines of the generated file compared with pyarrow.csv (default: 300,000)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--probe-distinct", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.probe_distinct:
        print(json.dumps({"bytes": _probe_counter(args.probe_distinct)}))
        return 0

    if args.compare:
        result = compare_with_arrow(Path(args.compare), args.rounds)
        _print_compare(result)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return 0

    from ..data.export import write_criteo_text
    from ..data.synthetic import SyntheticConfig, SyntheticCTR

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    small_lines = max(1000, args.lines // 5)
    syn = SyntheticCTR(SyntheticConfig(num_rows=args.lines, cardinality_scale=args.scale, seed=0), cache_rows=0)
    runs = {}
    for name, lines in (("small", small_lines), ("large", args.lines)):
        text = work / f"criteo_{lines}.tsv"
        t = time.perf_counter()
        if not text.exists():
            write_criteo_text(syn, text, num_lines=lines, compress=False, progress=False)
        print(f"generated {text} ({lines:,} lines, {text.stat().st_size / 2**20:,.0f} MiB) "
              f"in {time.perf_counter() - t:.0f}s", flush=True)
        proc = subprocess.run([sys.executable, "-m", "compembed.benchmarks.ingest", "--worker", "--input", str(text),
                               "--out", str(work / f"prepared_{name}"), "--workers", str(args.workers)],
                              capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return 1
        runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = runs[name]
        print(f"  prepare: {r['rows']:,} rows in {r['seconds']:.1f}s = {r['rows'] / r['seconds']:,.0f} rows/s "
              f"({r['bytes'] / r['seconds'] / 2**20:.1f} MiB/s; {r['rows'] / r['cpu_seconds']:,.0f} rows per CPU-second), "
              f"peak RSS {r['peak_rss'] / 2**30:.2f} GiB, {r['distinct']:,} distinct values", flush=True)
    small, large = runs["small"], runs["large"]
    rate = large["rows"] / large["seconds"]
    cpu_rate = large["rows"] / large["cpu_seconds"]
    slope = (large["peak_rss"] - small["peak_rss"]) / max(1, large["distinct"] - small["distinct"])
    # The two runs' peaks are mostly fixed costs (interpreter, buffers), so their slope can be far
    # below what a value really costs. The probe counts as many distinct values as the largest
    # Kaggle feature has, in a fresh process, and charges every further value at its rate (merge
    # peak included): an estimate on the high side.
    probe_distinct = max(KAGGLE_CARDINALITIES) if args.lines >= 1_000_000 else 100_000
    probe = subprocess.run([sys.executable, "-m", "compembed.benchmarks.ingest", "--probe-distinct",
                            str(probe_distinct)], capture_output=True, text=True, check=True)
    per_value = json.loads(probe.stdout.strip().splitlines()[-1])["bytes"] / probe_distinct
    rss_full = large["peak_rss"] + max(slope, per_value) * max(0, KAGGLE_DISTINCT - large["distinct"])
    parse = _parse_rates(work / f"criteo_{args.lines}.tsv", min(200_000, args.lines))
    loader = _loader_vs_training(work / "prepared_large", batches=400)
    head = work / "criteo_compare.tsv"  # the first --compare-lines lines of the large file
    with open(work / f"criteo_{args.lines}.tsv", "rb") as src, open(head, "wb") as dst:
        dst.writelines(line for _, line in zip(range(args.compare_lines), src))
    compare = compare_with_arrow(head, args.rounds, work)
    head.unlink()
    result = {
        "lines": args.lines, "scale": args.scale, "workers": args.workers, "runs": runs, "rows_per_s": rate,
        "rows_per_cpu_s": cpu_rate,
        **parse, "parse_speedup_vs_python": parse["parse_rows_per_s_vectorised"] / parse["parse_rows_per_s_python"],
        "rss_bytes_per_distinct_value": slope, "probe_distinct": probe_distinct,
        "probe_bytes_per_distinct_value": per_value,
        "extrapolated_kaggle": {"lines": KAGGLE_LINES, "distinct": KAGGLE_DISTINCT, "minutes": KAGGLE_LINES / rate / 60,
                                "cpu_minutes": KAGGLE_LINES / cpu_rate / 60,
                                "peak_rss_gib": rss_full / 2**30},
        **loader, **compare,
    }
    print(f"\nparsing the same {min(200_000, args.lines):,} lines in memory (best of 3, alternated): vectorised "
          f"{parse['parse_rows_per_s_vectorised']:,.0f} rows/s, per-line Python {parse['parse_rows_per_s_python']:,.0f} "
          f"rows/s ({result['parse_speedup_vs_python']:.1f}x; the Python parser validates nothing)")
    print(f"memory: {slope:.0f} bytes of peak RSS per distinct value between the two runs; counting "
          f"{probe_distinct:,} distinct values alone costs {per_value:.0f} bytes each (merges included)")
    print(f"extrapolated to the Kaggle file ({KAGGLE_LINES:,} lines, {KAGGLE_DISTINCT:,} distinct values): "
          f"{KAGGLE_LINES / rate / 60:.0f} min at this run's wall-clock rate ({KAGGLE_LINES / cpu_rate / 60:.0f} CPU-minutes), "
          f"peak RSS {rss_full / 2**30:.1f} GiB (every further distinct value charged "
          f"{max(slope, per_value):.0f} bytes)")
    for k, v in loader.items():
        print(f"{k}: {v:,.0f}" if isinstance(v, float) else f"{k}: {v}")
    _print_compare(compare)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if not args.keep:
        import shutil

        for lines in (small_lines, args.lines):
            (work / f"criteo_{lines}.tsv").unlink(missing_ok=True)
        for name in runs:
            shutil.rmtree(work / f"prepared_{name}", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
