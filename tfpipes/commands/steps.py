"""``tfpipes preprocess | train | export``: run one step directly on paths."""

from __future__ import annotations

import argparse
import logging

from tfpipes.commands import add_command
from tfpipes.layout import DEFAULT_RECORD_LAYOUT, RECORD_LAYOUTS

log = logging.getLogger("tfpipes")


def register(sub) -> None:
    p = add_command(
        sub,
        "preprocess",
        _preprocess,
        help="CSV -> sharded TFRecords with schema, statistics and a train/eval split",
        description=(
            "Turn CSV/TSV (plain or .gz) or Parquet files (a file, glob, directory or gs://\n"
            "prefix) into a data set of sharded TFRecord files of tf.train.Example (one per\n"
            "block of rows, column by column; --layout rows: one per row),\n"
            "with schema.json, stats.json and a deterministic hash-based train/eval split. The\n"
            "output is written to a staging place and committed with manifest.json last: a\n"
            "failed run leaves nothing behind. Bad rows stop the run with file:line: column\n"
            "(or, with --on-bad-row skip, are dropped and counted). See docs/preprocess.md.\n\n"
            "example:\n  tfpipes preprocess --source data.csv --output out/data --label species"
        ),
    )
    add_preprocess_flags(p)

    t = add_command(
        sub,
        "train",
        _train,
        help="train a model on a data set with a graph-mode custom loop; resumes automatically",
        description=(
            "Train with a tf.function custom loop under the tf.distribute strategy the\n"
            "environment asks for (TF_CONFIG with ps tasks: ParameterServerStrategy; workers\n"
            "only: MultiWorkerMirroredStrategy; several GPUs: Mirrored; one GPU: OneDevice;\n"
            "--strategy overrides). Checkpoints (model, optimizer, step, data position) go to\n"
            "<model-dir>/checkpoints every --checkpoint-every steps and at the end; running\n"
            "again with the same arguments resumes from the newest sound checkpoint and ends\n"
            "with the same weights as an uninterrupted run (on CPU). Evaluation on the eval\n"
            "split writes <model-dir>/metrics.json; TensorBoard logs go to <model-dir>/logs.\n\n"
            "models: linear (regression: MSE; classification: logistic), mlp (--hidden 64,32),\n"
            "        or your own package.module:build_fn(num_outputs) returning a Keras layer,\n"
            "        model or list of layers (from PYTHONPATH or an installed package).\n\n"
            "example:\n  tfpipes train --data out/data --model-dir out/model --model mlp "
            "--train-steps 2000"
        ),
    )
    _add_train_flags(t)  # TrainConfig's fields (the parameter surface imports no TensorFlow)

    e = add_command(
        sub,
        "export",
        _export,
        help="newest checkpoint -> verified SavedModel at <export-base>/<version>/",
        description=(
            "Restore the newest checkpoint of --model-dir and export a SavedModel with the\n"
            "signatures serving_default (serialized tf.train.Example strings) and predict (raw\n"
            "feature tensors) to <export-base>/<version>/, the layout TF Serving reads. The\n"
            "export is reloaded and must reproduce the checkpoint model's outputs on the eval\n"
            "split (--data) before it is published.\n\n"
            "example:\n  tfpipes export --model-dir out/model --export-base out/serving/iris "
            "--data out/data"
        ),
    )
    e.add_argument("--model-dir", required=True, help="model directory written by `tfpipes train`")
    e.add_argument(
        "--model",
        default="",
        help="the package.module:build_fn the model dir was trained with (required for a user "
        "model: a model dir does not choose what is imported; built-in models need nothing)",
    )
    e.add_argument("--export-base", required=True, help="<base> of <base>/<version>/")
    e.add_argument("--version", type=int, default=0, help="version number (default: now, epoch s)")
    e.add_argument("--data", default="", help="data set whose eval split verifies the export")
    e.add_argument("--overwrite", action="store_true", help="replace an existing version")


def add_preprocess_flags(p: argparse.ArgumentParser) -> None:
    """The flags of :class:`PreprocessConfig`, shared by ``preprocess`` and ``preprocess-plan``."""
    p.add_argument(
        "--source", required=True, help="CSV/Parquet file, glob, directory or gs:// prefix"
    )
    p.add_argument("--output", required=True, help="data set directory or gs:// prefix to create")
    p.add_argument("--label", required=True, help="name of the label column")
    p.add_argument("--eval-fraction", type=float, default=0.2, help="share of rows for eval (0.2)")
    p.add_argument(
        "--num-shards", type=int, default=16, help="shards per split (16: 4 each for 4 workers)"
    )
    p.add_argument("--split-seed", type=int, default=0, help="salt of the split hash (0)")
    p.add_argument("--compression", choices=["", "GZIP"], default="", help="shard compression")
    p.add_argument(
        "--layout",
        choices=list(RECORD_LAYOUTS),
        default=DEFAULT_RECORD_LAYOUT,
        help="record layout of the shards: blocks (one tf.train.Example per block of rows, "
        "column by column: fastest to train on; the default) or rows (one per row)",
    )
    p.add_argument(
        "--schema",
        default="",
        help='JSON overriding some columns: {column: dtype}, {column: {"dtype": ..., "kind": '
        '..., "format": ...}} or a schema.json (kinds: numeric, categorical, id, boolean, '
        "timestamp)",
    )
    p.add_argument(
        "--na-values",
        default=None,
        help="comma-separated cells read as missing values (default: ,NA,N/A,null,NULL,NaN,"
        "nan,None; the leading comma is the empty cell)",
    )
    p.add_argument(
        "--task",
        choices=["", "classification", "regression"],
        default="",
        help="the label's task (default: inferred from the label's values)",
    )
    p.add_argument(
        "--on-missing-label",
        choices=["drop", "fail"],
        default="drop",
        help="rows without a label: drop and count them (default), or fail on the first",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--workers", type=int, default=0, help="parsing threads (0: one per core)")
    p.add_argument(
        "--on-bad-row",
        choices=["fail", "skip"],
        default="fail",
        help="fail on the first bad row (default), or skip bad rows and count them",
    )


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from tfpipes.training.params import add_train_flags

    add_train_flags(parser)


def _preprocess(args) -> int:
    from tfpipes.preprocess import preprocess

    log_result(preprocess(preprocess_config(args)))
    return 0


def preprocess_config(args):
    """The :class:`PreprocessConfig` of :func:`add_preprocess_flags`' flags."""
    from tfpipes.preprocess import PreprocessConfig

    return PreprocessConfig(
        source=args.source,
        output=args.output,
        label=args.label,
        eval_fraction=args.eval_fraction,
        num_shards=args.num_shards,
        split_seed=args.split_seed,
        compression=args.compression,
        layout=args.layout,
        schema_path=args.schema,
        overwrite=args.overwrite,
        workers=args.workers,
        on_bad_row=args.on_bad_row,
        task=args.task,
        on_missing_label=args.on_missing_label,
        **({} if args.na_values is None else {"na_values": tuple(args.na_values.split(","))}),
    )


def log_result(r) -> None:
    """The lines a finished preprocess (single-process or a fan-out's commit) logs."""
    if r.column_table:
        log.info("%s", r.column_table)
    log.info(
        "preprocess: %d rows (train %d, eval %d, %d bad rows skipped, %d without a label "
        "dropped) in %.1f s, %.0f rows/s, "
        "%.1f MB/s on %d worker%s (peak RSS %d MB); %s task, %d features\n  -> %s",
        r.rows,
        r.train_rows,
        r.eval_rows,
        r.skipped_rows,
        r.missing_label_rows,
        r.seconds,
        r.rows_per_second,
        r.mb_per_second,
        r.workers,
        "" if r.workers == 1 else "s",
        r.peak_rss_mb,
        r.schema.task,
        len(r.schema.features),
        r.output,
    )


def _train(args) -> int:
    from tfpipes.training import train
    from tfpipes.training.params import config_from_args

    r = train(config_from_args(args))
    m = r.metrics
    quality = f"accuracy {m['accuracy']:.4f}" if "accuracy" in m else f"mse {m.get('mse', 0):.5f}"
    log.info(
        "train: steps %d -> %d (%d run) in %.1f s, %.0f examples/s; eval loss %.5f, %s\n  -> %s",
        r.start_step,
        r.final_step,
        r.steps_run,
        r.seconds,
        r.examples_per_second,
        m.get("loss", float("nan")),
        quality,
        r.model_dir,
    )
    return 0


def _export(args) -> int:
    from tfpipes.export import ExportConfig, export

    r = export(
        ExportConfig(
            model_dir=args.model_dir,
            model=args.model,
            export_base=args.export_base,
            version=args.version,
            data=args.data,
            overwrite=args.overwrite,
        )
    )
    log.info(
        "export: version %d from %s, verified on %d examples (max diff %.2g); signatures %s\n"
        "  -> %s",
        r.version,
        r.checkpoint,
        r.verified_examples,
        r.max_abs_diff,
        ", ".join(r.signatures),
        r.path,
    )
    return 0
