"""`compembed train` and `compembed evaluate`: one run described by a TOML config."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from ..embedding import COLD_SCHEMES, SCHEMES, FeatureConfig
from ..models import ARCHS, ModelConfig
from ..models.factory import SCHEME_FIELDS
from ..training.config import OPTIMIZERS, PRECISIONS, SYNTHETIC_ONLY, DataConfig, OptimConfig, TrainConfig, load_config, save_config
from .errors import UsageError

# (section, field, flag, argparse options). Every default is None so that only the options a user
# gives override the config file; the help shows the built-in default.
_D = {"model": ModelConfig(), "optim": OptimConfig(), "data": DataConfig(), "train": TrainConfig()}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 512,256,64, got {text!r}") from None


def _default(section: str, name: str) -> str:
    value = getattr(_D[section], name)
    if value is None and section == "model" and name in SCHEME_FIELDS:  # unset: the feature's default
        value = getattr(FeatureConfig("", 1), name)
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


OPTIONS: list[tuple[str, str, str, dict]] = [
    ("model", "arch", "--arch", dict(choices=ARCHS, help="model: dlrm or dcn")),
    ("model", "scheme", "--scheme", dict(choices=SCHEMES, help="embedding scheme of the compressed features")),
    ("model", "operation", "--operation", dict(choices=("mult", "add", "concat"),
                                               help="how qr/gqr/crt combine their tables")),
    ("model", "num_collisions", "--collisions", dict(type=int, help="ids per shared row for hashing/qr/path")),
    ("model", "num_partitions", "--partitions", dict(type=int, help="number of tables k for gqr/crt")),
    ("model", "path_hidden", "--path-hidden", dict(type=_ints, help="hidden sizes of the path scheme's MLPs")),
    ("model", "hot_rows", "--hot-rows", dict(
        type=int, help="hybrid: the K most frequent ids (frequency-ordered ids) of a feature get rows of their own")),
    ("model", "cold_scheme", "--cold-scheme", dict(choices=COLD_SCHEMES, help="hybrid: scheme of the other ids")),
    # robe, dhe, tt and md (issue 11)
    ("model", "robe_size", "--robe-size", dict(type=int, help="robe: shared array length in values (0: n*D/collisions)")),
    ("model", "block_size", "--block-size", dict(type=int, help="robe: Z, values per hashed block, divides D (0: D)")),
    ("model", "robe_signs", "--robe-signs", dict(action=argparse.BooleanOptionalAction, help="robe: hashed signs")),
    ("model", "dhe_hashes", "--dhe-hashes", dict(type=int, help="dhe: k, the hash encoding's size")),
    ("model", "dhe_hidden", "--dhe-hidden", dict(type=_ints, help="dhe: hidden sizes of the decoder MLP")),
    ("model", "dhe_gaussian", "--dhe-gaussian", dict(action=argparse.BooleanOptionalAction,
                                                     help="dhe: Gaussian (Box-Muller) encoding, else uniform")),
    ("model", "dhe_batchnorm", "--dhe-batchnorm", dict(action=argparse.BooleanOptionalAction,
                                                       help="dhe: batch norm after each hidden layer")),
    ("model", "dhe_activation", "--dhe-activation", dict(choices=("mish", "relu"), help="dhe: MLP activation")),
    ("model", "tt_rank", "--tt-rank", dict(type=int, help="tt: TT-rank of the 3 cores (capped per feature at its largest useful rank)")),
    ("model", "tt_cache_rows", "--tt-cache-rows", dict(
        type=int, help="tt: the K most frequent ids (frequency-ordered ids) read full cached rows")),
    ("model", "md_alpha", "--md-alpha", dict(type=float, help="md: power-law temperature alpha of the block widths")),
    ("model", "md_blocks", "--md-blocks", dict(type=int, help="md: number of equal frequency blocks of ids")),
    ("model", "md_base_dim", "--md-base-dim", dict(type=int, help="md: width of the most popular block (0: --dim)")),
    # cce (embedding.cce)
    ("model", "cce_columns", "--cce-columns", dict(type=int, help="cce: c, columns of width D/c (divides D)")),
    ("model", "cce_rows", "--cce-rows", dict(type=int, help="cce: k, rows of each column's two tables (0: n/(2 collisions))")),
    ("model", "cce_every", "--cce-every", dict(type=int, help="cce: re-cluster every N global steps (0: never by steps)")),
    ("model", "cce_epoch_end", "--cce-epoch-end", dict(action=argparse.BooleanOptionalAction,
                                                       help="cce: re-cluster at the end of every epoch")),
    ("model", "cce_rounds", "--cce-rounds", dict(type=int, help="cce: the most re-clusterings (0: no limit; default 3)")),
    ("model", "cce_sample", "--cce-sample", dict(type=int, help="cce: ids k-means runs on (0: min(n, max(8k, 65536)))")),
    ("model", "threshold", "--threshold", dict(type=int, help="compress only features with more categories")),
    ("model", "embedding_dim", "--dim", dict(type=int, help="embedding dimension D")),
    ("model", "bottom_mlp", "--bottom-mlp", dict(type=_ints, help="DLRM bottom MLP hidden sizes (output: D)")),
    ("model", "top_mlp", "--top-mlp", dict(type=_ints, help="DLRM top MLP hidden sizes (output: 1)")),
    ("model", "cross_layers", "--cross-layers", dict(type=int, help="DCN cross layers")),
    ("model", "deep_mlp", "--deep-mlp", dict(type=_ints, help="DCN deep network sizes")),
    ("optim", "name", "--optimizer", dict(choices=OPTIMIZERS, help="optimizer")),
    ("optim", "lr", "--lr", dict(type=float, help="learning rate of the dense layers (MLPs, cross network)")),
    ("optim", "embedding_lr", "--embedding-lr", dict(type=float, help="learning rate of the tables (unset: --lr)")),
    ("optim", "warmup_steps", "--warmup-steps", dict(
        type=int, help="linear learning-rate warm-up of tables and layers: step s uses lr x min(1, s/N)")),
    ("optim", "embedding_update", "--embedding-update", dict(
        choices=("sparse", "dense"),
        help="sparse: update only rows in the batch (lazy Adam/AMSGrad); dense: exact dense update")),
    ("data", "source", "--data", dict(metavar="DIR", help="'synthetic' or a directory made by `compembed prepare`")),
    ("data", "rows", "--rows", dict(type=int, help="synthetic rows in all splits")),
    ("data", "cardinality_scale", "--scale", dict(type=float, help="synthetic cardinalities = Criteo's x this")),
    ("data", "seed", "--data-seed", dict(type=int, help="seed of the synthetic data")),
    ("data", "id_order", "--id-order", dict(choices=("value", "frequency"),
                                            help="synthetic ids in value or frequency order (id 0 most frequent)")),
    ("train", "batch_size", "--batch-size", dict(type=int, help="training batch size")),
    ("train", "eval_batch_size", "--eval-batch-size", dict(type=int, help="evaluation batch size")),
    ("train", "epochs", "--epochs", dict(type=int, help="passes over the training split")),
    ("train", "max_steps", "--max-steps", dict(type=int, help="stop after this many steps (0: no limit)")),
    ("train", "seed", "--seed", dict(type=int, help="seed of initialisation and shuffling")),
    ("train", "log_every", "--log-every", dict(type=int, help="steps between metric records")),
    ("train", "checkpoint_every", "--checkpoint-every", dict(type=int, help="steps between checkpoints (0: per epoch)")),
    ("train", "threads", "--threads", dict(type=int, help="torch CPU threads (0: torch's default)")),
    ("train", "eval_every", "--eval-every", dict(
        type=int, help="steps between validation evaluations (0: only at the end of each epoch and of the run)")),
    ("train", "early_stopping", "--early-stopping", dict(
        type=int, help="stop after N validation evaluations in a row without a lower val loss (0: never)")),
    ("train", "keep_best", "--keep-best", dict(
        action=argparse.BooleanOptionalAction,
        help="evaluate at the end with the parameters of the lowest val loss (best.safetensors), not the last")),
    ("train", "precision", "--precision", dict(
        choices=PRECISIONS, help="training steps under autocast: bf16 (CPU or CUDA) or fp16 (CUDA only, with a loss "
        "scale); parameters and evaluation stay fp32")),
]


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device {cpu,cuda,auto}`` (not part of a run's config: a run may be resumed on another device)."""
    parser.add_argument("--device", default="cpu", metavar="{cpu,cuda,auto}",
                        help="where to compute: cpu, cuda (or cuda:N), or auto: cuda when available, else cpu "
                        "(default: cpu)")


def add_config_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The run options, grouped by config section, each overriding the config file."""
    groups = {s: parser.add_argument_group(f"[{s}] options (override --config)") for s in _D}
    for section, name, flag, kwargs in OPTIONS:
        if flag in skip:
            continue
        kwargs = dict(kwargs)
        kwargs["help"] += f" (default: {_default(section, name)})"
        if "choices" not in kwargs and "action" not in kwargs:
            kwargs.setdefault("metavar", {int: "N", float: "X", _ints: "N,N,..."}.get(kwargs.get("type"), "VALUE"))
        groups[section].add_argument(flag, dest=f"{section}.{name}", default=None, **kwargs)


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None, source: str | None = None) -> TrainConfig:
    """``base`` (or the config file, or the defaults) with the given options applied, and with the data
    ``source`` if given. Options of synthetic data given for a prepared dataset are ignored, with a warning
    (the run's config does not record them)."""
    config = base or (load_config(args.config) if getattr(args, "config", None) else TrainConfig())
    changes: dict[str, dict] = {}
    for section, name, _, _ in OPTIONS:
        value = getattr(args, f"{section}.{name}", None)
        if value is not None:
            changes.setdefault(section, {})[name] = value
    if source is not None:
        changes.setdefault("data", {})["source"] = source
    top = changes.pop("train", {})
    for section, values in changes.items():
        top[section] = dataclasses.replace(getattr(config, section), **values)
    config = dataclasses.replace(config, **top)
    synthetic = [flag for section, name, flag, _ in OPTIONS
                 if section == "data" and name in SYNTHETIC_ONLY and getattr(args, f"{section}.{name}", None) is not None]
    if synthetic and config.data.source != "synthetic":
        print(f"warning: {', '.join(synthetic)}: options of synthetic data, ignored for the prepared dataset "
              f"{config.data.source}", file=sys.stderr)
    return config


def given_options(args: argparse.Namespace) -> list[str]:
    return [flag for section, name, flag, _ in OPTIONS if getattr(args, f"{section}.{name}", None) is not None]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train and evaluate DLRM or DCN with any embedding scheme",
        description="Train a recommendation model whose embedding tables may be compressed, evaluate it on "
        "validation and test (BCE loss, accuracy, ROC-AUC, and the Bayes-optimal loss on synthetic data), "
        "and print what the tables cost. The run's directory holds config.toml, an atomic checkpoint "
        "(checkpoint.safetensors), the parameters of the best validation loss (best.safetensors), "
        "metrics.jsonl and summary.json; --resume continues a killed run to the same result.",
        epilog="example: compembed train --scheme qr --operation mult --collisions 4 --out runs/qr4",
    )
    p.add_argument("--config", metavar="TOML", help="run config file (options given on the command line override it)")
    p.add_argument("--write-config", metavar="TOML",
                   help="write the resolved config to this file and exit (edit it, then --config it)")
    p.add_argument("--out", metavar="DIR", default="runs/train",
                   help="run directory for config, checkpoint, metrics and summary (default: runs/train)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the config stored there")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--features", action="store_true", help="also print the per-feature memory table")
    add_device_option(p)
    add_config_options(p)
    p.set_defaults(func=run_train, resume_hint=_train_resume_hint)

    e = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained run's checkpoint on a split",
        description="Load RUN_DIR/config.toml and the run's parameters (best.safetensors, those of the best "
        "validation loss, which the run's summary reports; else checkpoint.safetensors), evaluate on the given "
        "splits and print loss, accuracy, AUC (and the Bayes-optimal loss on synthetic data).",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="directory of a run made by `compembed train`")
    e.add_argument("--split", nargs="+", default=["test"], choices=("train", "val", "test"),
                   help="splits to evaluate (default: test)")
    e.add_argument("--data", metavar="DIR", default=None,
                   help="evaluate on this prepared dataset instead of the run's own (same features)")
    e.add_argument("--batch-size", type=int, default=8192, help="evaluation batch size (default: 8192)")
    e.add_argument("--last", action="store_true",
                   help="evaluate the last parameters (checkpoint.safetensors) even when best.safetensors exists")
    add_device_option(e)
    e.add_argument("--int8", action="store_true",
                   help="evaluate with int8 row-wise tables (as `compembed export --int8` writes them); the table "
                   "bytes shown are the int8 ones")
    e.set_defaults(func=run_evaluate)


def _train_resume_hint(args: argparse.Namespace) -> str | None:
    from ..training.loop import CONFIG

    if args.write_config or not (Path(args.out) / CONFIG).is_file():
        return None
    return f"the run so far is kept: continue it with `compembed train --resume --out {args.out}`"


def run_train(args: argparse.Namespace) -> int:
    from ..training.loop import CONFIG, train
    from ..training.report import format_table

    out = Path(args.out)
    if args.resume:
        given = [flag for flag in given_options(args) if flag != "--data"]
        if args.config or given:
            raise UsageError(f"--resume continues the run described by {out / CONFIG}; it takes no --config or "
                             f"run options but --data (got {', '.join(given) or '--config'})")
        if not (out / CONFIG).exists():
            raise UsageError(f"--resume: {out} holds no run ({CONFIG} is missing)")
        config = load_config(out / CONFIG)
        moved = getattr(args, "data.source", None)
        if moved is not None:  # the run's dataset at another path: the checkpoint checks that it is the same
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, source=moved))
    else:
        config = config_from_args(args)
    if args.write_config:
        save_config(config, args.write_config)
        print(f"wrote {args.write_config}")
        return 0
    result = train(config, out_dir=out, resume=args.resume, progress=not args.no_progress, device=args.device)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports, as only it writes the run directory
    print(format_table([result.to_dict()], split="test" if "test" in result.evals else next(iter(result.evals), "test")))
    if args.features:
        print()
        print(result.model.embeddings.summary())
    print(f"\n{result.steps:,} steps, {result.samples:,} samples, train loss {result.train_loss:.5f}; "
          f"run directory {out} (config.toml, checkpoint.safetensors, metrics.jsonl, summary.json)")
    if result.best is not None:
        used = "the final evaluation uses its parameters" if result.best["used"] else "not used (--no-keep-best)"
        stopped = "; stopped early" if result.stopped_early else ""
        print(f"best val loss {result.best['val_loss']:.5f} at step {result.best['step']:,} "
              f"(epoch {result.best['epoch'] + 1}): {used}{stopped}")
    for message in result.dead_layers:
        print(f"warning: {message}", file=sys.stderr)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from ..training.device import resolve_device
    from ..training.evaluate import evaluate
    from ..training.report import format_table, memory_report
    from ..training.rundir import load_run

    device = resolve_device(args.device)
    run = load_run(args.run_dir, last=args.last, data=args.data)
    config, dataset, model = run.config, run.dataset, run.model
    memory, label = memory_report(model), config.model.label()
    if args.int8:
        from ..serving.quantize import embedding_bytes, quantize_int8

        if device.type != "cpu":
            raise ValueError(f"--int8 evaluates on the CPU only (torch's int8 embedding kernels have no {device.type} "
                             "version); leave out --device or use --device cpu")
        model = quantize_int8(model)
        memory, label = dataclasses.replace(memory, embedding_bytes=embedding_bytes(model.embeddings)), label + " int8"
    model.to(device)
    with torch.no_grad():
        evals = {s: evaluate(model, dataset, s, args.batch_size) for s in args.split}
    row = {"arch": config.model.arch, "label": label, "memory": memory.to_dict(),
           "evals": {k: v.to_dict() for k, v in evals.items()}, "samples_per_s": None}
    for split in args.split:
        print(format_table([row], split=split))
    return 0
