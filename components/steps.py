"""preprocess, train and export as KFP v2 components.

(No ``from __future__ import annotations`` here: kfp reads the annotations as types.)

They are Python components with a target image: the body runs inside the tfpipes image
(``TFPIPES_IMAGE``, default ``tfpipes:<version>``), where tfpipes and kfp are installed, so
``install_kfp_package=False`` and no ``packages_to_install``: nothing is pip-installed at run
time. kfp.local's SubprocessRunner runs the same bodies in the current environment.

Each body is an adapter: artifacts and parameters in -> a config -> one library call ->
artifacts and metadata out. A user's mistake (``UserError``) becomes one line and a non-zero
exit code, like the CLI (``tfpipes.errors.exit_on_error``; imported inside each body, as KFP
ships only the function's source).
"""

import os

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from tfpipes import __version__

IMAGE = os.environ.get("TFPIPES_IMAGE", f"tfpipes:{__version__}")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fingerprint_op(
    source: str,
    label: str,
    eval_fraction: float,
    num_shards: int,
    cache_index: str = "",
) -> str:
    """The cache key of preprocess: a hash of the input bytes and the parameters, salted when
    the output cached under it no longer exists (see tfpipes.cache). Never cached itself."""
    from tfpipes import cache, storage
    from tfpipes.errors import UserError, exit_on_error
    from tfpipes.preprocess import INPUT_SUFFIXES, source_fingerprint

    with exit_on_error("fingerprint"):
        files = storage.match_files(source, INPUT_SUFFIXES)  # exactly what preprocess reads
        if not files:
            raise UserError(f"{source}: no input files")
        params = {"label": label, "eval_fraction": eval_fraction, "num_shards": num_shards}
        key, why = cache.lookup_key(cache_index, cache.cache_key(source_fingerprint(files), params))
    print(f"fingerprint: {key} ({why})")
    return key


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess_op(
    source: str,
    label: str,
    examples: Output[Dataset],
    eval_fraction: float = 0.2,
    num_shards: int = 16,
    compression: str = "",
    content_key: str = "",
    cache_index: str = "",
    na_values: str = "",
    task: str = "",
    on_missing_label: str = "drop",
    layout: str = "blocks",
) -> str:
    """CSV at ``source`` (file, glob, directory or gs:// prefix) -> the ``examples`` data set;
    returns its URI (the pipelines pick it or the fan-out's, ``dsl.OneOf``).

    ``content_key`` (from fingerprint_op) is part of KFP's cache key, so the cache is reused
    only for the same input content; the output is recorded under it in ``cache_index``.
    ``na_values``: the missing-value tokens, comma-separated as ``--na-values`` ("": the
    default set); ``task``, ``on_missing_label`` and ``layout`` as ``tfpipes preprocess``'s
    flags."""
    from tfpipes.errors import exit_on_error
    from tfpipes.preprocess import preprocess
    from tfpipes.preprocess.config import component_config

    with exit_on_error("preprocess"):
        r = preprocess(
            component_config(
                source,
                examples.path,
                label,
                na_values,
                eval_fraction=eval_fraction,
                num_shards=num_shards,
                compression=compression,
                overwrite=True,  # a retried task replaces its own partial output
                task=task,
                on_missing_label=on_missing_label,
                layout=layout,
            )
        )
    examples.metadata.update(
        {
            "rows": r.rows,
            "missing_label_rows": r.missing_label_rows,
            "train_rows": r.train_rows,
            "eval_rows": r.eval_rows,
            "task": r.schema.task,
            "source_hash": r.source_hash,
            "content_key": content_key,
        }
    )
    if content_key:
        from tfpipes import cache

        cache.record(cache_index, content_key, examples.uri)
    print(f"preprocess: {r.rows} rows ({r.rows_per_second:.0f}/s) -> {examples.path}")
    return examples.uri


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_op(
    examples: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    model_name: str = "mlp",
    hidden: str = "64,32",
    optimizer: str = "",
    learning_rate: float = 0.0,
    batch_size: int = 64,
    train_steps: int = 1000,
    checkpoint_dir: str = "",
    seed: int = 42,
    steps_per_loop: int = 50,
    checkpoint_every: int = 200,
    cache: bool = False,
    mixed_precision: str = "",
    warm_start_from: str = "",
):
    """Train on ``examples``. The training parameters are ``tfpipes train``'s (KFP reads this
    signature, so it is written out; ``tests/test_params.py`` checks it against TrainConfig).
    Checkpoints and TensorBoard logs go to ``checkpoint_dir`` (local or
    gs://: a retried or preempted pod resumes from there) or, when empty, straight to the
    ``model`` artifact's object-storage URI while training (never only into the artifact's
    local path, which KFP uploads after the container exits: a preempted pod would lose it).
    ``report``: an HTML page (the KFP UI shows it) with the run's loss and eval curves, read
    from its TensorBoard logs, and the final metrics."""
    from tfpipes import layout
    from tfpipes.errors import exit_on_error
    from tfpipes.training import train
    from tfpipes.training.params import from_params, pick

    model_dir = checkpoint_dir or (model.uri if model.uri.startswith("gs://") else model.path)
    with exit_on_error("train"):
        cfg = from_params(pick(locals()), data=examples.path, model_dir=model_dir, progress=False)
        r = train(cfg)
    if model_dir != model.path:
        layout.write_model_dir_pointer(model.path, model_dir)
    model.metadata.update({"model_dir": model_dir, "step": r.final_step, "model": model_name})
    for k, v in r.metrics.items():
        if isinstance(v, (int, float)):
            metrics.log_metric(k, v)
    # KFP keeps logged metrics in the artifact's metadata only; write the file too, so the
    # artifact has content wherever it is stored.
    import json

    with open(metrics.path, "w") as f:
        json.dump(r.metrics, f, indent=2)
    from tfpipes.training.report import training_report

    with exit_on_error("train"), open(report.path, "w") as f:
        f.write(
            training_report(
                f"Training: {model_name}", model_dir, r.metrics, r.logs, r.start_step, r.final_step
            )
        )
    print(f"train: step {r.final_step}, {r.examples_per_second:.0f} examples/s -> {model_dir}")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_op(
    model: Input[Model],
    examples: Input[Dataset],
    exported: Output[Model],
    version: str = "",
    publish_base: str = "",
):
    """Export the newest checkpoint to ``exported``/<version>/ (verified), and publish a copy to
    ``publish_base``/<version>/ (e.g. the gs:// folder TF Serving watches) when given."""
    from tfpipes.errors import UserError, exit_on_error
    from tfpipes.export import ExportConfig, export

    with exit_on_error("export"):
        if version and not version.isdigit():
            raise UserError(f"version {version!r}: expected a positive integer")
        r = export(
            ExportConfig(
                model_dir=model.metadata.get("model_dir") or model.path,
                # The model the pipeline's parameters named (the train step records it): a
                # model dir never chooses which user module is imported.
                model=model.metadata.get("model", ""),
                export_base=exported.path,
                version=int(version or 0),
                data=examples.path,
                overwrite=True,
            )
        )
        published = ""
        if publish_base:  # ungated: with a lineage record that says so (no verdicts)
            from tfpipes import lineage

            record = lineage.lineage_record(
                version=r.version, data=examples.uri, training=dict(model.metadata)
            )
            published = lineage.publish_version(
                r.path, publish_base, r.version, record, examples.path
            )
    exported.metadata.update(
        {
            "version": r.version,
            "saved_model": r.path,
            "published": published,
            "verified_examples": r.verified_examples,
        }
    )
    print(f"export: version {r.version} -> {r.path}" + (f", {published}" if published else ""))
