"""Strategy resolution for every environment shape: TF_CONFIG variants and GPU counts, given to
the pure resolution function as its inputs (nothing of TensorFlow is mocked)."""

import json
import logging
import re

import pytest

from tfpipes.errors import UserError
from tfpipes.strategy import Resolution, create_strategy, resolve


def tf_config(cluster: dict, task_type: str, index: int = 0, **extra) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}, **extra})


W2 = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
CW = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}
PS = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"], "ps": ["127.0.0.1:4"]}


@pytest.mark.parametrize(
    "config, gpus, kind, workers, ps",
    [
        (None, 0, "default", 1, 0),
        ("", 0, "default", 1, 0),
        (None, 1, "one_device", 1, 0),
        (None, 4, "mirrored", 1, 0),
        (tf_config(W2, "worker", 1), 0, "multi_worker", 2, 0),
        (tf_config(W2, "worker", 0), 8, "multi_worker", 2, 0),  # GPUs per worker: still MWMS
        (tf_config(CW, "chief"), 0, "multi_worker", 2, 0),
        (tf_config(W2, "worker", 1, environment="cloud"), 0, "multi_worker", 2, 0),
        (tf_config(PS, "chief"), 0, "parameter_server", 2, 1),
        (tf_config(PS, "ps", 0), 0, "parameter_server", 2, 1),
        (tf_config(PS, "worker", 1, environment="cloud"), 2, "parameter_server", 2, 1),
        # one task only: nothing to distribute across machines
        (tf_config({"worker": ["127.0.0.1:1"]}, "worker"), 0, "default", 1, 0),
        (tf_config({"worker": ["127.0.0.1:1"]}, "worker"), 2, "mirrored", 1, 0),
        (json.dumps({"cluster": {"worker": [], "ps": []}}), 1, "one_device", 1, 0),
    ],
)
def test_resolve_from_environment_shape(config, gpus, kind, workers, ps):
    r = resolve(config, gpus)
    assert (r.kind, r.num_workers, r.num_ps, r.num_gpus) == (kind, workers, ps, gpus)


def test_chief_and_input_pipelines():
    # MWMS without a chief: worker 0 is the chief; pipelines are numbered like TF's InputContext
    w = [resolve(tf_config(W2, "worker", i), 0) for i in range(2)]
    assert [r.is_chief for r in w] == [True, False]
    assert [r.input_pipeline_id for r in w] == [0, 1]
    # with a chief: the chief is pipeline 0 and trains too, worker i is pipeline i + 1
    c, w0 = resolve(tf_config(CW, "chief"), 0), resolve(tf_config(CW, "worker", 0), 0)
    assert (c.is_chief, w0.is_chief) == (True, False)
    assert (c.input_pipeline_id, w0.input_pipeline_id) == (0, 1)
    # PS: only the chief writes
    assert [resolve(tf_config(PS, t, 0), 0).is_chief for t in ("chief", "worker", "ps")] == [
        True,
        False,
        False,
    ]
    assert Resolution("default").is_chief and Resolution("mirrored").input_pipeline_id == 0


@pytest.mark.parametrize(
    "config, gpus, override, kind",
    [
        (None, 0, "one_device", "one_device"),  # on the CPU: allowed
        (None, 0, "mirrored", "mirrored"),
        (None, 4, "default", "default"),
        (None, 2, "one_device", "one_device"),
        (tf_config({"worker": ["127.0.0.1:1"]}, "worker"), 0, "multi_worker", "multi_worker"),
        (tf_config(W2, "worker"), 0, "multi_worker", "multi_worker"),
    ],
)
def test_override_that_fits(config, gpus, override, kind):
    assert resolve(config, gpus, override).kind == kind


@pytest.mark.parametrize(
    "config, override, message",
    [
        (None, "multi_worker", "needs a TF_CONFIG cluster"),
        (None, "parameter_server", "needs a TF_CONFIG cluster"),
        (tf_config(W2, "worker"), "parameter_server", "names no 'ps' tasks"),
        (tf_config(W2, "worker"), "mirrored", "describes a multi_worker cluster"),
        (tf_config(W2, "worker"), "default", "describes a multi_worker cluster"),
        (tf_config(PS, "chief"), "multi_worker", "describes a parameter_server cluster"),
        (None, "tpu", "choose one of"),
    ],
)
def test_override_that_does_not_fit(config, override, message):
    with pytest.raises(UserError, match=message):
        resolve(config, 0, override)


@pytest.mark.parametrize(
    "config, message",
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "JSON object"),
        (tf_config(W2, "evaluatorx"), "not in the cluster"),
        (tf_config(W2, "worker", 2), "out of range"),
        (tf_config({"master": ["h:1"], "worker": ["h:2"]}, "worker"), "'master' is not supported"),
        (tf_config({"worker": ["h:1"], "ps": ["h:2"]}, "worker"), "needs a 'chief'"),
    ],
)
def test_bad_tf_config(config, message):
    with pytest.raises(UserError, match=message):
        resolve(config, 0)


def test_evaluator_task_resolves_without_a_place_in_the_cluster():
    r = resolve(tf_config(W2, "evaluator"), 0)
    assert (r.kind, r.task_type, r.is_chief) == ("multi_worker", "evaluator", False)


@pytest.mark.parametrize("kind", ["default", "one_device", "mirrored"])
def test_single_process_strategies_are_created_and_logged(kind, caplog):
    caplog.set_level(logging.INFO, logger="tfpipes.strategy")
    strategy = create_strategy(Resolution(kind))
    assert strategy.num_replicas_in_sync == 1
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("strategy:")]
    assert line and f"strategy: {kind} (" in line[0] and "task worker:0" in line[0]
    assert "1 replica(s) in sync" in line[0] and "devices: CPU" in line[0]


# --- TF_CONFIG of a wrong shape: one line naming TF_CONFIG, exit 2 (issue 12) ---------------


@pytest.mark.parametrize(
    "config, message",
    [
        ('{"task": "worker"}', "'task' must be an object"),
        ('{"task": ["worker", 0]}', "'task' must be an object"),
        (tf_config(W2, "worker", "1"), 'task index must be an integer, got "1"'),
        (tf_config(W2, "worker", 1.5), "task index must be an integer, got 1.5"),
        (tf_config(W2, "worker", True), "task index must be an integer, got true"),
        (json.dumps({"cluster": W2, "task": {"type": 0, "index": 0}}), "task type must be a"),
        (tf_config({"worker": "127.0.0.1:1"}, "worker"), 'cluster["worker"] must be a list'),
        (tf_config({"worker": {"0": "h:1"}}, "worker"), 'cluster["worker"] must be a list'),
        (tf_config({"worker": ["h:1", 2]}, "worker"), 'cluster["worker"] must be a list'),
        (tf_config({"worker": [""]}, "worker"), 'cluster["worker"] must be a list'),
        (json.dumps({"cluster": ["h:1"]}), "JSON object with a 'cluster' object"),
        ("null", "JSON object"),
    ],
)
def test_tf_config_of_a_wrong_shape_is_one_line_naming_it(config, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        resolve(config, 0)
    assert str(e.value).startswith("TF_CONFIG") and "\n" not in str(e.value)


def test_a_long_wrong_value_is_shown_short():
    with pytest.raises(UserError) as e:
        resolve(tf_config({"worker": "x" * 5000}, "worker"), 0)
    assert len(str(e.value)) < 200


def test_tfpipes_train_with_a_bad_tf_config_exits_2_in_one_line(tmp_path, monkeypatch, capsys):
    """The entry point: before any data is read or anything written."""
    from tfpipes import cli

    model_dir = tmp_path / "model"
    for config in ('{"task":"worker"}', tf_config(W2, "worker", "x"), "{"):
        monkeypatch.setenv("TF_CONFIG", config)
        code = cli.main(["train", "--data", str(tmp_path / "d"), "--model-dir", str(model_dir)])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert err.startswith("tfpipes train: error: TF_CONFIG") and "\n" not in err, err
        assert not model_dir.exists()
