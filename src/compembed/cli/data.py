"""`compembed prepare criteo|table` and `compembed synth`: turn raw data into a prepared dataset."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    prep = subparsers.add_parser(
        "prepare", help="preprocess Criteo files or your own CTR table into a dataset directory",
        description="Preprocess raw data into a dataset directory that `compembed train --data DIR` reads.\n"
        "Run `compembed prepare criteo --help` or `compembed prepare table --help`.", formatter_class=fmt,
    )
    kinds = prep.add_subparsers(dest="kind", metavar="KIND")
    prep.set_defaults(func=lambda args: (prep.print_help(), 2)[1])

    c = kinds.add_parser(
        "criteo", help="Criteo-format text files (Kaggle train.txt, Terabyte days), plain or gzip",
        formatter_class=fmt,
        description="Preprocess Criteo-format files: label, I1..I13, C1..C26, tab-separated, no header.\n"
        "Dense: negatives clipped to 0, then log(1 + x); missing -> 0 (see --dense-transform). Categorical:\n"
        "8-hex-digit hashes mapped to ids per feature: 0 = missing, 1 = rare (seen < --min-freq times in the\n"
        "train split, or not there), 2.. = values (see --id-order). Vocabularies, per-id counts (counts.npy)\n"
        "and dense statistics come from the train split only.\n"
        "Output DIR: dense.npy, sparse.npy, labels.npy, counts.npy, meta.json, cardinalities.json, vocab.json;\n"
        "it appears only when complete (built under DIR.partial, then renamed). A run stopped by Ctrl-C, a\n"
        "kill or an I/O error (a full disk) goes on from its last checkpoint (see --checkpoint-every) with\n"
        "--resume.\n\n"
        "examples:\n"
        "  compembed prepare criteo train.txt.gz --out data/criteo           # paper's 7-day split\n"
        "  compembed prepare criteo day_0.gz day_1.gz --out data/tb --split random --min-freq 3\n"
        "  compembed prepare criteo train.txt --out data/c --skip-bad-lines   # skip and count bad lines",
    )
    c.add_argument("inputs", nargs="+", metavar="FILE", help="input files, read in the order given")
    c.add_argument("--out", required=True, metavar="DIR", help="output dataset directory")
    c.add_argument("--split", choices=["days", "random", "none"], default="days",
                   help="days: cut rows into --days equal consecutive parts, the last halved into test "
                   "(first half) and val (the paper's Kaggle split); random: per-row draw with --val-fraction/"
                   "--test-fraction and --seed; none: all train (default: days)")
    c.add_argument("--days", type=int, default=7, help="parts of the day split (default: 7)")
    _split_options(c)
    c.add_argument("--min-freq", type=int, default=1,
                   help="values seen fewer times share the rare id 1 (default: 1, keep all)")
    c.add_argument("--no-vocab", action="store_true", help="do not write vocab.json (large for the full data)")
    _id_order_option(c)
    c.add_argument("--dense-transform", choices=["log1p", "standardize", "auto"], default="log1p",
                   help="log1p: clip negatives to 0, then log(1 + x) (Criteo's standard); standardize: (x - mean) / "
                   "std of the train split; auto: log1p for count-like columns, else standardize (default: log1p)")
    c.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint (kept in DIR.partial; "
                   "same inputs and options), instead of starting over")
    c.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between checkpoints of the parsing pass, which --resume continues from; also "
                   "one at its end (default: 60)")
    c.add_argument("--workers", type=int, default=1,
                   help="processes that parse blocks in parallel (default: 1; try the number of free cores)")
    _bad_line_options(c)
    c.add_argument("--max-bad-lines", type=int, default=None,
                   help="with --skip-bad-lines, fail once more lines than this are bad (default: no limit)")
    _common(c)
    c.set_defaults(func=run_prepare_criteo, resume_hint=_prepare_resume_hint)

    t = kinds.add_parser(
        "table", help="your own CTR table: CSV/TSV with a header (plain or gzip) or Parquet",
        formatter_class=fmt,
        description="Preprocess a CTR table whose columns you name. Only named columns are used: leave out\n"
        "any column that leaks the label. Categorical ids: 0 = missing, 1 = rare/unseen, 2.. = values\n"
        "(see --id-order). Vocabularies, per-id counts and dense statistics come from the train split only:\n"
        "a value seen only in validation or test rows maps to the unseen id.\n\n"
        "example (MovieLens as CTR; `rating` is the label's source and is not named):\n"
        "  compembed prepare table ml100k_ctr.tsv.gz --out data/ml --label label \\\n"
        "      --categorical user_id,item_id,age,gender,occupation,zip_code,release_year \\\n"
        "      --dense timestamp --multi-hot genres",
    )
    t.add_argument("inputs", nargs="+", metavar="FILE", help="input files (same columns), read in order")
    t.add_argument("--out", required=True, metavar="DIR", help="output dataset directory")
    t.add_argument("--label", required=True, metavar="COL", help="the 0/1 label column")
    t.add_argument("--categorical", default="", metavar="COLS", help="comma-separated single-valued columns")
    t.add_argument("--dense", default="", metavar="COLS", help="comma-separated numeric columns")
    t.add_argument("--multi-hot", default="", metavar="COLS",
                   help="comma-separated multi-valued columns (e.g. genres 'a|b|c', or Parquet lists)")
    t.add_argument("--sep", default="|", help="separator inside multi-hot values (default: '|')")
    t.add_argument("--delimiter", default=None,
                   help="field delimiter of text files (default: tab for .tsv/.tsv.gz, else comma)")
    t.add_argument("--dense-transform", choices=["log1p", "standardize", "auto", "none"], default="auto",
                   help="log1p: clip negatives to 0, then log(1 + x); standardize: (x - mean) / std of the train "
                   "split; auto: per column, log1p if count-like (train min >= 0, max <= 1e6, min <= max - min), "
                   "else standardize (e.g. timestamps); none: raw values. Missing -> 0 after it. The choice and its "
                   "statistics are recorded in meta.json (default: auto)")
    t.add_argument("--split", choices=["random", "sequential", "none"], default="random",
                   help="random: per-row draw from --seed; sequential: first rows train, then val, then test "
                   "(time-ordered data); none: all train (default: random)")
    _split_options(t)
    t.add_argument("--min-freq", type=int, default=1,
                   help="values seen fewer times in the train split share the rare id 1 (default: 1)")
    _id_order_option(t)
    _bad_line_options(t)
    _common(t)
    t.set_defaults(func=run_prepare_table)

    s = subparsers.add_parser(
        "synth", help="generate Criteo-like synthetic data with known click probabilities",
        formatter_class=fmt,
        description="Generate Criteo-like synthetic CTR data: 13 dense and 26 categorical features with the\n"
        "Kaggle cardinalities times --scale, Zipf-like frequencies, missing values, and labels from a\n"
        "planted model in which every category matters. The true click probability of every row is\n"
        "stored, so the Bayes-optimal loss can be reported. Deterministic for --seed.\n\n"
        "examples:\n"
        "  compembed synth --out data/synth --rows 1000000 --scale 0.01\n"
        "  compembed synth --out /tmp/fake.tsv.gz --rows 100000 --format criteo   # raw text, for ingestion",
    )
    s.add_argument("--out", required=True, metavar="PATH", help="dataset directory (or text file with --format criteo)")
    s.add_argument("--rows", type=int, default=200_000, help="rows over all splits (default: 200000)")
    s.add_argument("--scale", type=float, default=0.001,
                   help="factor on the Criteo Kaggle cardinalities (default: 0.001; 1.0 = 33.8M categories)")
    s.add_argument("--seed", type=int, default=0, help="fixes the planted model and all rows (default: 0)")
    s.add_argument("--val-fraction", type=float, default=0.1, help="validation share (default: 0.1)")
    s.add_argument("--test-fraction", type=float, default=0.1, help="test share (default: 0.1)")
    s.add_argument("--format", choices=["dataset", "criteo"], default="dataset",
                   help="dataset: a directory `compembed train --data` reads; criteo: Criteo-format text "
                   "(gzip if PATH ends in .gz) to try `compembed prepare criteo` on (default: dataset)")
    _id_order_option(s)
    _common(s)
    s.set_defaults(func=run_synth)


def _split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share of a random/sequential split (default: 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="test share of a random/sequential split (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split (default: 0)")


def _id_order_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id-order", choices=["value", "frequency"], default="value",
                   help="value: ids in value order; frequency: ids by descending train-split count, so id 0 is the "
                   "most frequent and the K hottest ids are those below K (the missing and rare ids go where their "
                   "counts put them; meta.json records where) (default: value)")


def _bad_line_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip malformed lines and report them (default: stop at the first, naming file, line, column)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cols(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _prepare_resume_hint(args: argparse.Namespace) -> str | None:
    partial = Path(args.out).with_name(f"{Path(args.out).name}.partial")
    if not (partial / "checkpoint.json").is_file():
        return None
    return f"progress is kept in {partial}: run the same command with --resume to go on from it"


def _summary(result) -> None:
    info = result.info
    print(f"wrote {result.path}: {result.num_rows:,} rows in {result.seconds:.1f}s "
          f"({result.rows_per_second:,.0f} rows/s)")
    print("splits: " + ", ".join(f"{k} {v:,}" for k, v in info.split_sizes.items()))
    print("cardinalities (incl. missing and rare ids): "
          + ", ".join(f"{n}={c:,}" for n, c in zip(info.categorical_names, info.cardinalities)))
    kinds = {n: t["kind"] for n, t in result.extra.get("dense_transforms", {}).items()}
    if len(set(kinds.values())) == 1:
        print(f"dense transform: {next(iter(kinds.values()))} (every column)")
    elif kinds:
        print("dense transforms: " + ", ".join(f"{n}={k}" for n, k in kinds.items()))
    ignored = result.extra.get("ignored_columns")
    if ignored:
        print("ignored columns (not features): " + ", ".join(ignored))
    if result.report.total:
        print(result.report.summary())


def run_prepare_criteo(args: argparse.Namespace) -> int:
    from ..data.prepare import CriteoPrepareConfig, prepare_criteo

    cfg = CriteoPrepareConfig(
        split=args.split, days=args.days, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        seed=args.seed, min_freq=args.min_freq, skip_bad_lines=args.skip_bad_lines,
        max_bad_lines=args.max_bad_lines, write_vocab=not args.no_vocab, workers=args.workers,
        id_order=args.id_order, dense_transform=args.dense_transform, checkpoint_seconds=args.checkpoint_every,
    )
    result = prepare_criteo(args.inputs, args.out, cfg, overwrite=args.overwrite, progress=not args.quiet,
                            resume=args.resume)
    _summary(result)
    return 0


def run_prepare_table(args: argparse.Namespace) -> int:
    from ..data.table import TableSpec, prepare_table

    spec = TableSpec(
        label=args.label, categorical=_cols(args.categorical), dense=_cols(args.dense),
        multi_hot=_cols(args.multi_hot), multi_hot_sep=args.sep, delimiter=args.delimiter,
        dense_transform=args.dense_transform, min_freq=args.min_freq, split=args.split,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
        skip_bad_lines=args.skip_bad_lines, id_order=args.id_order,
    )
    result = prepare_table(args.inputs, args.out, spec, overwrite=args.overwrite, progress=not args.quiet)
    _summary(result)
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from ..data.export import save_synthetic, write_criteo_text
    from ..data.synthetic import SyntheticConfig, SyntheticCTR

    ds = SyntheticCTR(SyntheticConfig(num_rows=args.rows, cardinality_scale=args.scale, seed=args.seed,
                                      val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                                      id_order=args.id_order))
    if args.format == "criteo":
        if Path(args.out).exists() and not args.overwrite:
            raise FileExistsError(f"{args.out} already exists (pass --overwrite to replace it)")
        path = write_criteo_text(ds, args.out, progress=not args.quiet)
    else:
        path = save_synthetic(ds, args.out, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {path}: {args.rows:,} rows, splits "
          + ", ".join(f"{k} {v:,}" for k, v in ds.info.split_sizes.items()))
    if args.format == "dataset":
        print(f"Bayes-optimal test loss (BCE of the true probabilities): {ds.bayes_loss('test'):.5f}")
    return 0
