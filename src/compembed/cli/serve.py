"""`compembed export` and `compembed predict`: a trained run as one file, and scoring raw rows with it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .train import add_device_option


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    e = subparsers.add_parser(
        "export", help="write a trained run as one exported model file (torch.export) with its preprocessing",
        formatter_class=fmt,
        description="Write the model of RUN_DIR (the parameters `compembed evaluate` uses: best.safetensors when the\n"
        "run kept them, else checkpoint.safetensors) as a torch.export program (torch.export.save), with the\n"
        "preprocessing that `compembed predict` needs (vocabularies, rare/unseen and missing ids, dense\n"
        "transforms, column layout) stored inside the same file as the extra file compembed.json. The file\n"
        "is written atomically; the program is checked against the model on a sample batch first.\n"
        "Load it in Python with torch.export.load(path, extra_files={'compembed.json': ''}).\n\n"
        "examples:\n"
        "  compembed export runs/qr4 --out qr4.pt2\n"
        "  compembed export runs/qr4 --out qr4-int8.pt2 --int8    # int8 row-wise tables",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="directory of a run made by `compembed train`")
    e.add_argument("--out", required=True, metavar="FILE", help="the model file to write (e.g. model.pt2)")
    e.add_argument("--int8", action="store_true",
                   help="int8 row-wise tables (per-row fp32 scale and bias; about 1/4 of the bytes plus 8 per row); "
                   "the MLPs stay float")
    e.add_argument("--last", action="store_true", help="export the last parameters even when best.safetensors exists")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "predict", help="score raw Criteo-format or table rows with an exported model",
        formatter_class=fmt,
        description="Score the rows of FILE with MODEL (made by `compembed export`) and write one click probability\n"
        "per row, in input order. FILE has the format the model's data was prepared from: Criteo-format text\n"
        "(40 tab-separated fields, the label first: any 0/1, not used), or a table with the same columns\n"
        "(header; the label column included and checked, not used). Values training did not keep get the\n"
        "rare/unseen id, empty ones the missing id, exactly as in `compembed prepare`; a malformed row stops\n"
        "with its file, line and column. --out is written atomically (complete, or not at all).\n\n"
        "example:\n"
        "  compembed predict qr4.pt2 --input day_23.gz --out scores.txt",
    )
    p.add_argument("model", metavar="MODEL", help="a model file written by `compembed export`")
    p.add_argument("--input", required=True, metavar="FILE", help="rows to score (plain or gzip; a table: CSV/TSV/Parquet)")
    p.add_argument("--out", metavar="FILE", default=None, help="write the probabilities here (default: stdout)")
    p.add_argument("--batch-size", type=int, default=8192, metavar="N", help="rows per model call (default: 8192)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_option(p)
    p.set_defaults(func=run_predict)


def _check_out(out: str | None, overwrite: bool) -> None:
    if out is not None and Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")


def run_export(args: argparse.Namespace) -> int:
    from ..serving.export import export_run

    _check_out(args.out, args.overwrite)
    result = export_run(args.run_dir, args.out, int8=args.int8, last=args.last)
    tables = "int8 row-wise" if result.int8 else "float32"
    print(f"wrote {result.path} ({result.file_bytes:,} bytes): {result.checkpoint.name}, {tables} tables "
          f"{result.table_bytes:,} bytes; exported logits within {result.max_difference:.1e} of the model's")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..data.errors import SKIP_HINT, InputError
    from ..serving.predict import load_served, predict_file
    from ..training.device import resolve_device

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    _check_out(args.out, args.overwrite)
    model = load_served(args.model, resolve_device(args.device))
    bar = tqdm(desc="predict", unit="rows", disable=args.no_progress or None, file=sys.stderr)
    try:
        rows = predict_file(model, args.input, args.out, args.batch_size, on_rows=bar.update, write=sys.stdout.write)
    except InputError as err:  # predict scores every row: there is no --skip-bad-lines to suggest
        err.args = (str(err).replace(SKIP_HINT, " (predict scores every row: fix or remove it)"),)
        raise
    finally:
        bar.close()
    if args.out is not None:
        print(f"wrote {rows:,} probabilities to {args.out}", file=sys.stderr)
    return 0
