"""TF_CONFIG without an operator (tfpipes.cluster.pod_env): unit rules, then real trainer
processes that get only what a JobSet or Indexed-Job pod would have.

Each task process runs in a private mount and UTS namespace (``unshare``, as root) where a
generated ``/etc/hosts`` maps every pod hostname of the job to 127.0.0.1 and ``hostname`` is
the pod's: the trainer resolves its peers by the same names as in the cluster, through the
system resolver, with no test-only code path. The environment is the manifest container's
(downward-API fields resolved to the labels JobSet would set) plus ``JOB_COMPLETION_INDEX``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_distributed import base_env, losses, make_data, train_rows
from tfpipes.cluster import indexed_job, jobset, pod_env, pods
from tfpipes.cluster.tfjob import TFJobSpec
from tfpipes.errors import UserError

PY = sys.executable
TFPIPES = str(Path(PY).parent / "tfpipes")


def pod_environment(scheme: str, role: str, index: int, name: str = "tfp") -> dict:
    spec = TFJobSpec(image="i", workers=2, ps=1, name=name)
    objects = [jobset.build_jobset(spec)] if scheme == "jobset" else indexed_job.build_jobs(spec)
    return resolve_env(pod_containers(objects, scheme)[role], name, role, index)


def pod_containers(objects: list[dict], scheme: str) -> dict[str, dict]:
    """{role: the container of its pod template} of a JobSet or of plain Jobs."""
    if scheme == "jobset":
        (js,) = objects
        return {
            r["name"]: r["template"]["spec"]["template"]["spec"]["containers"][0]
            for r in js["spec"]["replicatedJobs"]
        }
    return {
        j["metadata"]["labels"]["tfpipes.dev/role"]: j["spec"]["template"]["spec"]["containers"][0]
        for j in objects
        if j["kind"] == "Job"
    }


def resolve_env(container: dict, job_name: str, role: str, index: int) -> dict:
    """The container's environment as the kubelet gives it: JobSet's pod labels for the
    downward-API fields, the Job controller's ``JOB_COMPLETION_INDEX``."""
    labels = {
        "jobset.sigs.k8s.io/jobset-name": job_name,
        "jobset.sigs.k8s.io/replicatedjob-name": role,
    }
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            key = path[len("metadata.labels['") : -2]
            env[e["name"]] = labels[key]
    env[pod_env.INDEX] = str(index)
    return env


@pytest.mark.parametrize("scheme", ["jobset", "job"])
def test_derived_tf_config_has_the_operators_shape(scheme):
    cfgs = {
        (role, i): json.loads(pod_env.derive_tf_config(pod_environment(scheme, role, i)))
        for role, n in (("chief", 1), ("worker", 2), ("ps", 1))
        for i in range(n)
    }
    clusters = {json.dumps(c["cluster"]) for c in cfgs.values()}
    assert len(clusters) == 1  # every task sees the same cluster
    cluster = cfgs["chief", 0]["cluster"]
    host = "tfp-worker-0-1" if scheme == "jobset" else "tfp-worker-1"
    assert cluster == {
        "chief": [f"{pod_env.hostname(scheme, 'tfp', 'chief', 0)}.tfp:2222"],
        "worker": [f"{pod_env.hostname(scheme, 'tfp', 'worker', 0)}.tfp:2223", f"{host}.tfp:2224"],
        "ps": [f"{pod_env.hostname(scheme, 'tfp', 'ps', 0)}.tfp:2225"],
    }
    assert cfgs["worker", 1]["task"] == {"type": "worker", "index": 1}
    assert cfgs["ps", 0]["environment"] == "cloud"


def test_no_variables_no_tf_config_and_each_missing_one_named():
    assert pod_env.derive_tf_config({"HOME": "/root"}) is None
    full = pod_environment("jobset", "worker", 0)
    for var in (pod_env.JOB_NAME, pod_env.ROLE, pod_env.SHAPE, pod_env.INDEX):
        env = {k: v for k, v in full.items() if k != var}
        with pytest.raises(UserError, match=f"{var} is not set"):
            pod_env.derive_tf_config(env)
    with pytest.raises(UserError, match="JOB_COMPLETION_INDEX='2' is out of range for 2 worker"):
        pod_env.derive_tf_config({**full, pod_env.INDEX: "2"})
    with pytest.raises(UserError, match="TFPIPES_CLUSTER_SHAPE='worker=x'"):
        pod_env.derive_tf_config({**full, pod_env.SHAPE: "worker=x"})
    with pytest.raises(UserError, match="TFPIPES_ROLE='evaluator'"):
        pod_env.derive_tf_config({**full, pod_env.ROLE: "evaluator"})


def test_a_pod_that_cannot_derive_it_fails_in_one_line(tmp_path):
    env = base_env(**{k: v for k, v in pod_environment("job", "worker", 0).items()})
    del env[pod_env.INDEX]
    proc = subprocess.run(
        [TFPIPES, "train", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "tfpipes train: error: cannot derive TF_CONFIG: JOB_COMPLETION_INDEX is not set (a job "
        "pod of tfpipes has TFPIPES_LAUNCHER, TFPIPES_JOB_NAME, TFPIPES_ROLE, "
        "TFPIPES_CLUSTER_SHAPE, JOB_COMPLETION_INDEX)"
    )


# --- real processes ---------------------------------------------------------------------------


def free_port_range(count: int) -> int:
    """A base port with ``count`` free ports after it, on every address: TensorFlow's servers
    bind 0.0.0.0, which fails when any address holds the port (a probe of 127.0.0.1 alone
    passed while an earlier test's socket held the port on another address)."""
    for base in range(23000, 60000, 97):
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                s.bind(("0.0.0.0", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def run_pods(tmp_path: Path, scheme: str, spec: TFJobSpec, timeout: float) -> dict[str, str]:
    """Run every pod of ``spec``'s manifest as a process; return each task's output. The job
    is done when the chief (worker 0 without one) exits; the rest are stopped then."""
    objects = [jobset.build_jobset(spec)] if scheme == "jobset" else indexed_job.build_jobs(spec)
    containers = pod_containers(objects, scheme)
    tasks = [(role, i) for role, n, _ in pods.roles(spec) for i in range(n)]
    hosts = tmp_path / f"hosts-{scheme}"
    lines = ["127.0.0.1 localhost"]
    for role, i in tasks:
        host = pod_env.hostname(scheme, spec.name, role, i)
        lines.append(f"127.0.0.1 {host}.{spec.name} {host}")
    hosts.write_text("\n".join(lines) + "\n")
    procs, logs = {}, {}
    leader = tasks[0] if tasks[0][0] == "chief" else ("worker", 0)
    try:
        for role, i in tasks:
            c = containers[role]
            env = {
                "PATH": os.environ["PATH"],
                "PYTHONPATH": base_env()["PYTHONPATH"],
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "TFPIPES_PEER_TIMEOUT": "120",
                "TMPDIR": str(tmp_path),
                "HOME": str(tmp_path),
                **resolve_env(c, spec.name, role, i),
            }
            command = [
                TFPIPES if c["command"][0] == "tfpipes" else c["command"][0],
                *c["command"][1:],
            ]
            host = pod_env.hostname(scheme, spec.name, role, i)
            wrap = 'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"'
            log = open(tmp_path / f"{scheme}-{role}-{i}.log", "w+")
            logs[role, i] = log
            procs[role, i] = subprocess.Popen(
                ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", wrap,
                 str(hosts), host, *command],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        finishing = [leader] if spec.ps else [t for t in tasks if t[0] != "ps"]
        while time.monotonic() < deadline and any(procs[t].poll() is None for t in finishing):
            if any(p.poll() not in (None, 0) for p in procs.values()):
                break
            time.sleep(0.2)
        codes = {t: procs[t].poll() for t in finishing}
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
    out = {}
    for t, log in logs.items():
        log.seek(0)
        out[f"{t[0]}:{t[1]}"] = log.read()
        log.close()
    assert all(code == 0 for code in codes.values()), (codes, out)
    return out


@pytest.fixture(scope="module")
def full_batch_data(tmp_path_factory) -> Path:
    data = make_data(tmp_path_factory.mktemp("podenv"), 78, 2, seed=3)
    assert train_rows(data) == [32, 32]  # full-batch steps: trajectories comparable exactly
    return data


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """``local-cluster`` with explicit TF_CONFIG, run once per cluster shape: JobSet and
    Indexed-Job pods of the same shape are compared with the same reference run."""
    runs: dict[tuple, Path] = {}

    def run(args: list[str], workers: int, ps: int) -> Path:
        key = (tuple(args), workers, ps)
        if key not in runs:
            model_dir = tmp_path_factory.mktemp(f"local-{workers}w{ps}ps") / "model"
            local_cluster([*args, "--model-dir", str(model_dir)], workers, ps, timeout=240)
            runs[key] = model_dir
        return runs[key]

    return run


def local_cluster(args: list[str], workers: int, ps: int, timeout: float) -> None:
    proc = subprocess.run(
        [PY, "-m", "tfpipes.cli", "local-cluster", "--workers", str(workers), "--ps", str(ps),
         "--timeout", str(timeout), "--", *args],
        env=base_env(), capture_output=True, text=True, timeout=timeout + 30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.cluster
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "scheme, workers, ps", [("jobset", 2, 0), ("job", 2, 0), ("jobset", 1, 1), ("job", 1, 1)]
)
def test_pods_train_like_local_cluster_with_explicit_tf_config(
    tmp_path, full_batch_data, reference_run, scheme, workers, ps
):
    args = ["--data", str(full_batch_data), "--batch-size", "64", "--train-steps", "20"]
    args += ["--seed", "7", "--log-every", "1", "--steps-per-loop", "1", "--checkpoint-every", "10"]
    reference = reference_run(args, workers, ps)
    model = tmp_path / "pods"
    spec = TFJobSpec(
        image="i",
        workers=workers,
        ps=ps,
        name="tfp",
        port=free_port_range(workers + 2 * ps),
        train_args=(*args, "--model-dir", str(model)),
    )
    out = run_pods(tmp_path, scheme, spec, timeout=240)
    leader = "chief:0" if ps else "worker:0"
    assert "TF_CONFIG derived from the pod's environment" in out[leader], out[leader]
    kind = "parameter_server" if ps else "multi_worker"
    assert f"strategy: {kind}" in out[leader], out[leader]
    a, b = losses(reference), losses(model)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-5, (a, b)
    m1 = json.loads((reference / "metrics.json").read_text())
    m2 = json.loads((model / "metrics.json").read_text())
    assert m2["step"] == m1["step"] == 20
    assert m2["loss"] == pytest.approx(m1["loss"], abs=1e-5)
    assert shutil.which("unshare")
