"""One source for every training parameter: TrainConfig's fields, and each front door (the
``tfpipes train`` flags, run-local's flags, the KFP components, both pipelines, the argument
list a launcher passes) checked against it."""

import dataclasses
import os
import re

import pytest
import yaml
from kfp.dsl import Dataset, Markdown, Metrics, Model
from tfpipes_components import preprocess_op, train_op
from tfpipes_components.retrain import check_data_op
from tfpipes_components.tfjob_op import tfjob_train_op
from tfpipes_pipelines.distributed import (
    JOB,
    PLACE,
    TIMEOUT,
    compile_distributed_pipeline,
    distributed_pipeline,
)
from tfpipes_pipelines.training import compile_pipeline, training_pipeline

from tfpipes.cli import build_parser, main
from tfpipes.errors import UserError
from tfpipes.pipeline_params import DATA_CHECK, DATA_STEPS, REQUIRED
from tfpipes.training import TrainConfig
from tfpipes.training.params import (
    PARAMS,
    PIPELINE_PARAMS,
    config_from_args,
    from_params,
    pipeline_defaults,
    to_argv,
)

KFP_TYPES = {str: "String", int: "Integer", float: "Float", bool: "Boolean"}  # component_spec

# A value other than the default for every field, of the kind a user would type.
CHANGED = dict(
    data="gs://b/data",
    model_dir="out/m",
    model="linear",
    hidden=(8, 4),
    dropout=0.25,
    optimizer="rmsprop",
    learning_rate=0.125,
    batch_size=32,
    train_steps=0,
    steps_per_loop=7,
    checkpoint_every=9,
    max_to_keep=1,
    log_every=3,
    seed=1,
    shuffle_buffer=5,
    strategy="mirrored",
    cache=True,
    progress=False,
    mixed_precision="float16",
    jit=True,
    deterministic=True,
    warm_start_from="latest:gs://b/serving",
    peer_timeout=12.5,
    impute="median",
    class_weights="balanced",
)


def _train_args(argv):
    return build_parser().parse_args(["train", *argv])


def test_every_field_is_a_flag_and_defaults_live_in_the_dataclass():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert config_from_args(_train_args(["--data", "d", "--model-dir", "m"])) == TrainConfig(
        "d", "m"
    )
    parser = build_parser()
    (train,) = [a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train"]
    text = train[1].format_help()
    for p in PARAMS:
        assert p.flag in text
    # Defaults shown in --help are the dataclass's.
    assert "global batch size (64)" in text and "mlp hidden sizes (64,32)" in text
    assert "steps between checkpoints (200)" in text and "mlp dropout rate (0)" in text


def test_to_argv_gives_a_launcher_the_same_config():
    cfg = TrainConfig(**CHANGED)
    argv = to_argv(cfg)
    assert argv[:4] == ["--data", "gs://b/data", "--model-dir", "out/m"]
    assert config_from_args(_train_args(argv)) == cfg
    assert to_argv(TrainConfig("d", "m")) == ["--data", "d", "--model-dir", "m"]
    # Pipeline values (KFP names, text forms): the same arguments tfpipes train would take.
    values = dict(pipeline_defaults(), model_name="linear", hidden="8,4", mixed_precision="auto")
    assert to_argv(values) == ["--model", "linear", "--hidden", "8,4", "--mixed-precision", "auto"]
    off = dict(CHANGED, deterministic=False)
    assert "--no-deterministic" in to_argv(TrainConfig(**off))


def _inputs(component) -> dict:
    return {
        name: (spec.type, spec.default)
        for name, spec in component.component_spec.inputs.items()
        if not spec.type.startswith("system.")
    }


@pytest.mark.parametrize(
    "front_door",
    [train_op, tfjob_train_op, training_pipeline, distributed_pipeline],
    ids=["train_op", "tfjob_train_op", "training_pipeline", "distributed_pipeline"],
)
def test_components_and_pipelines_declare_every_training_parameter(front_door):
    inputs = _inputs(front_door)
    for p in PIPELINE_PARAMS:
        assert p.pipeline in inputs, f"{front_door.name} lacks {p.pipeline}"
        typ, default = inputs[p.pipeline]
        assert (typ, default) == (KFP_TYPES[p.kfp_type], p.kfp_default), p.pipeline


@pytest.mark.parametrize(
    "table, component",
    [
        (DATA_CHECK, check_data_op),
        (DATA_STEPS, preprocess_op),
        # image: the pipeline's default is the image it was compiled for, the step's "" its own
        ([q for q in JOB + PLACE + TIMEOUT if q.name != "image"], tfjob_train_op),
    ],
    ids=["data_check", "data", "job"],
)
def test_pipeline_parameters_passed_on_have_the_components_types_and_defaults(table, component):
    inputs = _inputs(component)
    for q in table:
        default = None if q.default is REQUIRED else q.default
        assert inputs[q.name] == (KFP_TYPES[q.annotation], default), q.name


def test_both_pipelines_expose_the_same_training_parameters_and_pass_them_on(tmp_path):
    names = {p.pipeline for p in PIPELINE_PARAMS}
    assert names == {
        "model_name",
        "hidden",
        "optimizer",
        "learning_rate",
        "batch_size",
        "train_steps",
        "seed",
        "steps_per_loop",
        "checkpoint_every",
        "cache",
        "mixed_precision",
        "warm_start_from",
    }
    for compile_, task in (
        (compile_pipeline, "train-op"),
        (compile_distributed_pipeline, "tfjob-train-op"),
    ):
        path = compile_(str(tmp_path / f"{task}.yaml"))
        spec = yaml.safe_load(open(path))
        declared = spec["root"]["inputDefinitions"]["parameters"]
        passed = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]
        for name in names:
            assert name in declared, (task, name)
            assert passed[name] == {"componentInputParameter": name}, (task, name)


def test_run_local_flags_are_the_pipeline_parameters():
    args = build_parser().parse_args(["run-local", "--source", "s", "--label", "y"])
    from tfpipes.commands.pipeline import _params

    params = _params(args)
    assert {k: params[k] for k in pipeline_defaults()} == pipeline_defaults()
    args = build_parser().parse_args(
        [
            "run-local",
            "--source",
            "s",
            "--label",
            "y",
            "--cache",
            "--mixed-precision",
            "--checkpoint-every",
            "5",
            "--hidden",
            "8",
        ]  # fmt: skip
    )
    params = _params(args)
    assert (params["cache"], params["mixed_precision"], params["checkpoint_every"]) == (
        True,
        "auto",
        5,
    )
    assert params["hidden"] == "8"


BAD_HIDDEN = "--hidden '64,x': expected comma-separated integers"


def test_bad_hidden_is_the_same_one_line_error_at_every_front_door(tmp_path, capsys):
    with pytest.raises(UserError) as e:
        from_params({"hidden": "64,x"})
    assert str(e.value) == BAD_HIDDEN

    assert main(["train", "--data", "d", "--model-dir", "m", "--hidden", "64,x"]) == 2
    assert capsys.readouterr().err.strip() == f"tfpipes train: error: {BAD_HIDDEN}"

    assert main(["run-local", "--source", "s", "--label", "y", "--hidden", "64,x"]) == 2
    assert capsys.readouterr().err.strip() == f"tfpipes run-local: error: {BAD_HIDDEN}"

    artifacts = {
        "examples": Dataset(uri=str(tmp_path / "data")),
        "model": Model(uri=str(tmp_path / "model")),
        "metrics": Metrics(uri=str(tmp_path / "metrics")),
    }
    # The train component's body as KFP runs it (before: int("x") was a traceback), and the
    # TFJob step, which refuses it before it creates a job (no cluster is reached).
    for name, run, extra in (
        ("train", train_op, {"report": Markdown(uri=str(tmp_path / "report"))}),
        ("tfjob_train", tfjob_train_op, {"image": "tfpipes:test"}),
    ):
        with pytest.raises(SystemExit) as exc:
            run.python_func(**artifacts, **extra, hidden="64,x")
        assert exc.value.code == 2
        assert capsys.readouterr().err.strip() == f"{name}: error: {BAD_HIDDEN}"


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--batch-size", "0", "--batch-size must be at least 1"),
        ("--train-steps", "-1", "--train-steps must be >= 0"),
        ("--optimizer", "lbfgs", "--optimizer 'lbfgs': choose one of sgd, adam, adagrad, rmsprop"),
        ("--dropout", "1", "--dropout must be in [0, 1)"),
        ("--hidden", "8,0", "--hidden sizes must be positive integers"),
        ("--mixed-precision", "float8",
         "--mixed-precision 'float8': choose one of auto, float16, bfloat16"),
        ("--peer-timeout", "0", "--peer-timeout must be a positive number of seconds"),
    ],
)  # fmt: skip
def test_bounds_are_one_line_errors_from_the_cli_and_the_pipeline_values(
    flag, value, message, capsys
):
    assert main(["train", "--data", "d", "--model-dir", "m", flag, value]) == 2
    assert capsys.readouterr().err.strip() == f"tfpipes train: error: {message}"
    p = next(p for p in PARAMS if p.flag == flag)
    if p.pipeline:
        typed = value if p.kfp_type is str else p.kfp_type(value)
        with pytest.raises(UserError, match=re.escape(message)):
            from_params({p.pipeline: typed})


def test_peer_timeout_is_a_config_field_not_an_environment_variable(monkeypatch):
    monkeypatch.delenv("TFPIPES_PEER_TIMEOUT", raising=False)
    cfg = config_from_args(_train_args(["--data", "d", "--model-dir", "m", "--peer-timeout", "7"]))
    assert cfg.peer_timeout == 7.0
    assert "TFPIPES_PEER_TIMEOUT" not in os.environ
    assert TrainConfig("d", "m").peer_timeout == 0.0  # not set: the environment's, else 300


def test_a_bad_training_value_is_refused_at_submit_time_before_anything_is_sent(tmp_path):
    from tfpipes_pipelines.package import read_package
    from tfpipes_pipelines.training import compile_pipeline

    package = read_package(compile_pipeline(str(tmp_path / "p.yaml")))
    with pytest.raises(UserError) as e:
        package.arguments(["source=s", "label=y", "hidden=abc"])
    assert str(e.value) == "--param hidden=abc: --hidden 'abc': expected comma-separated integers"
    with pytest.raises(UserError, match="--param batch_size=0: --batch-size must be at least 1"):
        package.arguments(["source=s", "label=y", "batch_size=0"])
    assert package.arguments(["source=s", "label=y", "hidden=8,4"])["hidden"] == "8,4"
