"""The compiled pipeline: resources, placement, credentials and caching as KFP will see them."""

import os
import re

import pytest
import yaml
from tfpipes_pipelines.training import PipelineOptions, compile_pipeline, parse_toleration

from tfpipes import cache

# The training pipeline's tasks. Issue 15: a data check before training, the gate, and
# publishing only when blessed (condition-1).
# issue 15: a data check before training, the gate, and publishing only when blessed;
# issue 13: preprocess in one task or fanned out by the input's size (the branches), the
# branch's data set imported as one
TASKS = {
    "input-bytes-op",
    "condition-branches-1",
    "importer",
    "check-data-op",
    "train-op",
    "export-op",
    "evaluate-op",
    "condition-6",
}


def _compiled(tmp_path, options=PipelineOptions()):
    path = str(tmp_path / "p.yaml")
    compile_pipeline(path, options)
    docs = list(yaml.safe_load_all(open(path)))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def _all_tasks(spec) -> dict:
    """Every task of the pipeline, those inside conditions and loops too, by name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks |= comp.get("dag", {}).get("tasks", {})
    return tasks


def test_caching_resources_and_placement(tmp_path):
    opts = PipelineOptions(
        train_gpus=2,
        gpu_type="nvidia.com/gpu",
        node_selector=(("pool", "gpu"),),
        tolerations=(parse_toleration("nvidia.com/gpu=present:NoSchedule"),),
        gcs_secret="gcs-key",
    )
    spec, platform = _compiled(tmp_path, opts)
    tasks = _all_tasks(spec)
    assert set(spec["root"]["dag"]["tasks"]) == TASKS
    caching = {
        name: t.get("cachingOptions", {}).get("enableCache", False)
        for name, t in tasks.items()
        if not name.startswith(("condition-", "for-loop-", "importer"))
    }
    assert caching == {
        "input-bytes-op": False,
        "fingerprint-op": False,
        "preprocess-op": True,
        "scan-list-op": False,
        "scan-op": False,
        "plan-op": False,
        "part-op": False,
        "commit-op": False,
        "check-data-op": False,
        "train-op": False,
        "export-op": False,
        "evaluate-op": False,
        "publish-op": False,
    }
    # preprocess's cache key includes the content key computed from the data
    pre_inputs = tasks["preprocess-op"]["inputs"]["parameters"]
    assert pre_inputs["content_key"]["taskOutputParameter"]["producerTask"] == "fingerprint-op"
    res = spec["deploymentSpec"]["executors"]["exec-train-op"]["container"]["resources"]
    assert res["accelerator"]["resourceCount"] == "2"
    assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "resourceCpuRequest" in res and "resourceMemoryRequest" in res
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = execs["exec-train-op"]
    assert train["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert train["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    ]
    for name in (
        "exec-preprocess-op", "exec-train-op", "exec-export-op", "exec-part-op", "exec-scan-op"
    ):  # fmt: skip
        assert execs[name]["secretAsVolume"][0]["secretName"] == "gcs-key"
        env = spec["deploymentSpec"]["executors"][name]["container"]["env"]
        assert {
            "name": "GOOGLE_APPLICATION_CREDENTIALS",
            "value": "/var/secrets/google/key.json",
        } in env
    assert "nodeSelector" not in execs["exec-preprocess-op"]


def test_default_pipeline_has_no_gpu_or_platform_config(tmp_path):
    spec, platform = _compiled(tmp_path)
    res = spec["deploymentSpec"]["executors"]["exec-train-op"]["container"].get("resources", {})
    assert "accelerator" not in res
    assert not platform


def test_cache_key_follows_content_and_missing_outputs(tmp_path):
    from tfpipes.preprocess import source_fingerprint

    a = tmp_path / "a.csv"
    a.write_text("x,y\n1,0\n")
    params = {"label": "y", "eval_fraction": 0.2, "num_shards": 2}
    k1 = cache.cache_key(source_fingerprint([str(a)]), params)
    assert k1 == cache.cache_key(source_fingerprint([str(a)]), params)
    a.write_text("x,y\n1,1\n")  # same size, other bytes
    k2 = cache.cache_key(source_fingerprint([str(a)]), params)
    assert k2 != k1
    assert cache.cache_key(source_fingerprint([str(a)]), {**params, "num_shards": 3}) != k2
    index = tmp_path / "index"
    assert cache.lookup_key(str(index), k2) == (k2, "new content")
    out = tmp_path / "out"
    os.makedirs(out)
    (out / "manifest.json").write_text("{}")
    cache.record(str(index), k2, str(out))
    assert cache.lookup_key(str(index), k2)[0] == k2  # output present: reuse
    os.remove(out / "manifest.json")
    salted, why = cache.lookup_key(str(index), k2)
    assert salted.startswith(k2 + "-rerun-") and "gone" in why


@pytest.mark.parametrize(
    "text, want",
    [
        ("k=v:NoSchedule", {"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}),
        ("k:NoExecute", {"key": "k", "operator": "Exists", "effect": "NoExecute"}),
        ('{"key": "k", "operator": "Exists"}', {"key": "k", "operator": "Exists"}),
    ],
)
def test_parse_toleration(text, want):
    assert parse_toleration(text) == want


def test_cli_compiles_the_distributed_variant(tmp_path):
    from tfpipes.cli import main

    path = str(tmp_path / "d.yaml")
    assert main(["compile", "--distributed", "-o", path]) == 0
    spec = yaml.safe_load(open(path))
    assert spec["pipelineInfo"]["name"] == "tfpipes-distributed-training"
    assert {"workers", "ps", "gpus_per_worker"} <= set(
        spec["root"]["inputDefinitions"]["parameters"]
    )


def _global_names(code) -> set[str]:
    """Every global name a function's code (nested code included) looks up."""
    import dis

    names = {i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"}
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            names |= _global_names(const)
    return names


@pytest.mark.parametrize("distributed", [False, True], ids=["training", "distributed"])
def test_every_step_runs_as_kfp_ships_it(tmp_path, distributed):
    """KFP runs a lightweight component from its function's source alone, copied into the
    spec: the module around it is not there. Load each step's program the way the executor
    does, and check that its function defines every global name it uses (a module-level
    import or constant the body relies on is a NameError in the container)."""
    import builtins
    import importlib.util

    from tfpipes.cli import main

    path = str(tmp_path / "p.yaml")
    assert main(["compile", *(["--distributed"] if distributed else []), "-o", path]) == 0
    executors = yaml.safe_load(open(path))["deploymentSpec"]["executors"]
    # issue 15: both pipelines add check-data, evaluate and publish; issue 13: input-bytes,
    # scan-list, scan, plan, part and commit (the fan-out), and the importer of the branch's
    # data set
    assert "importer" in executors.pop("exec-importer")
    assert len(executors) == 13
    for name, executor in executors.items():
        (program,) = [a for a in executor["container"]["command"] if "\ndef " in a]
        source = tmp_path / f"{name}.py"
        source.write_text(program)
        spec = importlib.util.spec_from_file_location(name.replace("-", "_"), source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # a default value from the module: NameError here
        func = getattr(module, re.search(r"^def (\w+)\(", program, re.M).group(1))
        missing = _global_names(func.__code__) - set(vars(module)) - set(dir(builtins))
        assert not missing, f"{name}: uses {sorted(missing)} without importing them"
