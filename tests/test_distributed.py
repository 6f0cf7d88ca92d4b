"""Distributed training on real multi-process TensorFlow clusters on 127.0.0.1.

Real ``tfpipes train`` processes, started by ``tfpipes local-cluster`` with the ``TF_CONFIG``
the Training Operator would give them; real gRPC, real collectives, real parameter servers. No
test talks to any address but 127.0.0.1. Every test is bounded (``pytest.mark.timeout`` and a
deadline on every wait) and leaves nothing running: ``local-cluster`` stops its tasks, and the
``runs`` fixture ends any launcher (and every task group it started) a failed test left behind.

Pure parts of ``tfpipes.peers`` (backoff, messages, which peers each role waits for) are tested
first, in milliseconds, with a fake clock.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tfpipes import peers
from tfpipes.errors import EXIT_RETRYABLE, EXIT_USER_ERROR, RetryableError, UserError
from tfpipes.strategy import Resolution

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]
PEER_TIMEOUT = 8  # seconds a task waits for a peer in these tests (TFPIPES_PEER_TIMEOUT)


# --- pure parts ------------------------------------------------------------------------------


def mwms(task_type="worker", index=0, workers=2, chief=False) -> Resolution:
    cluster = {"worker": [f"w{i}:2222" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["c:2222"]
    n = workers + int(chief)
    return Resolution("multi_worker", task_type, index, n, 0, 0, cluster)


def ps_cluster(task_type="chief", index=0) -> Resolution:
    cluster = {"chief": ["c:1"], "worker": ["w0:2", "w1:3"], "ps": ["p0:4", "p1:5"]}
    return Resolution("parameter_server", task_type, index, 2, 2, 0, cluster)


class FakeNet:
    """A clock, a sleep and a probe: ``ready_after[name]`` tries until a peer answers."""

    def __init__(self, ready_after: dict[str, int]):
        self.now = 0.0
        self.sleeps: list[float] = []
        self.tries: dict[str, int] = {}
        self.ready_after = ready_after
        self.connects: dict[str, bool] = {}

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def probe(self, peer, connect=True):
        self.connects[peer.name] = connect
        self.tries[peer.name] = self.tries.get(peer.name, 0) + 1
        if self.tries[peer.name] > self.ready_after.get(peer.name, 0):
            return None
        return "connection refused" if connect else "name does not resolve"


def test_peers_of_each_task_and_the_leader():
    assert [p.name for p in peers.cluster_peers(mwms("worker", 1, 3, chief=True))] == [
        "chief:0",
        "worker:0",
        "worker:2",
    ]
    assert peers.coordination_leader(mwms()) == ("worker", 0)
    assert peers.coordination_leader(mwms(chief=True)) == ("chief", 0)
    (p,) = peers.cluster_peers(mwms("worker", 0))
    assert (p.name, p.host, p.port, p.address) == ("worker:1", "w1", 2222, "w1:2222")
    bad = Resolution("multi_worker", "worker", 0, 2, 0, 0, {"worker": ["a:1", "nohost"]})
    with pytest.raises(UserError, match="worker:1 address 'nohost' is not host:port"):
        peers.cluster_peers(bad)


def test_wait_backs_off_exponentially_until_every_peer_answers():
    net = FakeNet({"worker:1": 4, "ps:0": 1})
    ps_list = [peers.Peer("worker", 1, "h", 1), peers.Peer("ps", 0, "h", 2)]
    peers.wait_for(ps_list, 100.0, 100.0, probe_fn=net.probe, clock=net.clock, sleep=net.sleep)
    assert net.sleeps == [0.1, 0.2, 0.4, 0.8]
    assert net.tries == {"worker:1": 5, "ps:0": 2}  # a ready peer is not asked again


def test_wait_gives_up_at_the_deadline_naming_each_missing_peer():
    net = FakeNet({"worker:1": 10**9, "ps:1": 10**9})
    missing = [peers.Peer("worker", 1, "10.1.2.3", 2222), peers.Peer("ps", 1, "ps-1", 2223)]
    with pytest.raises(RetryableError) as e:
        peers.wait_for(missing, 30.0, 30.0, probe_fn=net.probe, clock=net.clock, sleep=net.sleep)
    assert str(e.value).startswith(
        "worker:1 at 10.1.2.3:2222 unreachable after 30 s (connection refused); "
        "ps:1 at ps-1:2223 unreachable after 30 s (connection refused)"
    )
    assert e.value.exit_code == EXIT_RETRYABLE
    assert max(net.sleeps) == peers.MAX_BACKOFF and net.now == pytest.approx(30.0)


@pytest.mark.parametrize(
    "res, expected",
    [
        # The ps chief needs every worker and ps listening; they serve from the start.
        (ps_cluster("chief"), {"worker:0": True, "worker:1": True, "ps:0": True, "ps:1": True}),
        (ps_cluster("worker", 1), {}),  # servers wait for nobody
        (ps_cluster("ps", 0), {}),
        # MWMS: nobody listens before the strategy; names must resolve, the leader must listen.
        (mwms("worker", 0, 3), {"worker:1": False, "worker:2": False}),
        (mwms("worker", 2, 3), {"worker:0": True, "worker:1": False}),
        (mwms("worker", 0, 2, chief=True), {"chief:0": True, "worker:1": False}),
    ],
    ids=["ps-chief", "ps-worker", "ps-ps", "mwms-leader", "mwms-worker", "mwms-with-chief"],
)
def test_which_peers_each_task_waits_for(res, expected, monkeypatch):
    net = FakeNet({})
    monkeypatch.setattr(peers, "probe", net.probe)
    peers.wait_for_peers(res, timeout=1.0)
    assert net.connects == expected


def test_peer_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv(peers.ENV_TIMEOUT, raising=False)
    assert peers.peer_timeout() == peers.DEFAULT_TIMEOUT
    monkeypatch.setenv(peers.ENV_TIMEOUT, "12.5")
    assert peers.peer_timeout() == 12.5
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv(peers.ENV_TIMEOUT, bad)
        with pytest.raises(UserError, match=f"TFPIPES_PEER_TIMEOUT={bad!r}"):
            peers.peer_timeout()


def test_probe_real_sockets_on_loopback():
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    silent = socket.socket()  # bound, never listening: connection refused
    silent.bind(("127.0.0.1", 0))
    try:
        up = peers.Peer("worker", 0, "127.0.0.1", listening.getsockname()[1])
        down = peers.Peer("worker", 1, "127.0.0.1", silent.getsockname()[1])
        assert peers.probe(up) is None
        assert peers.probe(down) == "connection refused"
        assert peers.probe(down, connect=False) is None  # the name resolves
    finally:
        listening.close()
        silent.close()


def _listeners(n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        out.append(s)
    return out


def test_a_task_whose_listener_closes_a_moment_later_is_found_gone():
    # The failure TensorFlow reports can come before the dead task stops accepting connections.
    up, dying = _listeners(2)
    a = peers.Peer("ps", 0, "127.0.0.1", up.getsockname()[1])
    b = peers.Peer("ps", 1, "127.0.0.1", dying.getsockname()[1])
    closer = threading.Timer(0.6, dying.close)
    try:
        start = time.monotonic()
        closer.start()
        assert peers.probe(b) is None  # a single probe right away says it is up
        assert peers.gone_within([a, b], 5.0) == [b]
        assert 0.6 <= time.monotonic() - start < 5.0
        # Everyone answering: it probes for the whole window, then finds nobody gone.
        start = time.monotonic()
        assert peers.gone_within([a], 0.5) == []
        assert time.monotonic() - start >= 0.5
    finally:
        closer.cancel()
        up.close()
        dying.close()


def test_the_ps_chief_names_the_parameter_server_that_went_away_after_a_reset():
    import tensorflow as tf

    from tfpipes.training import ps_runner

    up, dying = _listeners(2)
    ports = [s.getsockname()[1] for s in (up, dying)]
    res = Resolution(
        "parameter_server", "chief", 0, 1, 2, 0,
        {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"],
         "ps": [f"127.0.0.1:{port}" for port in ports]},
    )  # fmt: skip
    reset = tf.errors.UnavailableError(None, None, "recvmsg:Connection reset by peer")
    closer = threading.Timer(0.5, dying.close)
    try:
        closer.start()
        error = ps_runner._failure(res, reset, "/m/checkpoints/ckpt-400")
        assert isinstance(error, RetryableError) and error.exit_code == EXIT_RETRYABLE
        assert str(error).startswith(
            f"parameter server ps:1 at 127.0.0.1:{ports[1]} failed: its variables are lost; "
            "run the job again to resume from /m/checkpoints/ckpt-400 (UnavailableError: "
        ), str(error)
        # Every parameter server answering: the cluster as a whole is named, not a server.
        res.cluster["ps"] = res.cluster["ps"][:1]
        error = ps_runner._failure(res, reset, None)
        assert str(error).startswith(
            "the cluster became unavailable; run the job again to resume from the start"
        ), str(error)
    finally:
        closer.cancel()
        up.close()
        dying.close()


# --- helpers for real processes -------------------------------------------------------------


def base_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", peers.ENV_TIMEOUT: "120", **extra})
    return env


class Run:
    """``python -m tfpipes.cli ARGS`` in its own session; stdout and stderr lines are collected
    as they come, and ``on_line(line, run)`` sees each stdout line (from a reader thread)."""

    def __init__(self, args, env=None, on_line=None):
        self.args = list(args)
        self.started = time.monotonic()
        self.out: list[str] = []
        self.err: list[str] = []
        self.on_line = on_line
        self.stamped: list[str] = []  # every line, with the seconds since the start
        self.pids: dict[str, int] = {}  # task -> pid (and process group), from local-cluster
        self.proc = subprocess.Popen(
            [PY, "-m", "tfpipes.cli", *self.args],
            env=env or base_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.ended: float | None = None  # when the process exited
        self.threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out, True)),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err, False)),
        ]
        self.threads.append(threading.Thread(target=self._wait_for_exit))
        for t in self.threads:
            t.daemon = True
            t.start()

    def _wait_for_exit(self) -> None:
        self.proc.wait()
        self.ended = time.monotonic()

    def _pump(self, pipe, lines, is_stdout):
        for line in iter(pipe.readline, ""):
            line = line.rstrip("\n")
            lines.append(line)
            self.stamped.append(f"{time.monotonic() - self.started:6.1f}s {line}")
            m = re.match(r"\[local-cluster\] started (\S+) \(pid (\d+)\)", line)
            if m:
                self.pids[m.group(1)] = int(m.group(2))
            if is_stdout and self.on_line:
                self.on_line(line, self)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(
                f"`tfpipes {' '.join(self.args[:1])}` still running after {timeout} s\n{self}"
            )
        for t in self.threads:
            t.join(timeout=10)
        return code

    def expect(self, code: int, timeout: float) -> None:
        """Wait; fail the test with the whole output unless the exit code is ``code``."""
        got = self.wait(timeout)
        if got != code:
            pytest.fail(f"`tfpipes {self.args[0]}` exited {got}, expected {code}\n{self}")

    def stop(self) -> None:
        """Stop the launcher (which stops its tasks), then make sure every group is gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for group in self.pids.values():
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def of(self, task: str) -> list[str]:
        prefix = f"[{task}] "
        return [line[len(prefix) :] for line in self.out if line.startswith(prefix)]

    def __str__(self) -> str:
        return "\n".join(["--- output", *self.stamped[-200:]])

    __repr__ = __str__


@pytest.fixture
def runs():
    """Start :class:`Run` s; any still running at the end is stopped with all its tasks."""
    started: list[Run] = []

    def start(args, env=None, on_line=None) -> Run:
        run = Run(args, env, on_line)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()


def make_data(root: Path, rows: int, shards: int, seed: int = 0) -> Path:
    from tfpipes.sample_data import write_csv

    root.mkdir(parents=True, exist_ok=True)
    write_csv(str(root / "data.csv"), rows, seed=seed)
    out = root / "data"
    subprocess.run(
        [PY, "-m", "tfpipes.cli", "preprocess", "--source", str(root / "data.csv"),
         "--output", str(out), "--label", "label", "--num-shards", str(shards)],
        env=base_env(), check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


def train_rows(data: Path) -> list[int]:
    manifest = json.loads((data / "manifest.json").read_text())
    return [s["rows"] for s in manifest["shards"] if s["split"] == "train"]


@pytest.fixture(scope="module")
def data4(tmp_path_factory) -> Path:
    """2000 rows, 4 train shards: two per worker."""
    return make_data(tmp_path_factory.mktemp("data4"), 2000, 4)


def latest_checkpoint_step(model_dir: Path) -> int:
    text = (model_dir / "checkpoints" / "checkpoint").read_text()
    return int(re.search(r'^model_checkpoint_path: ".*-(\d+)"', text, re.M).group(1))


def losses(model_dir: Path) -> dict[int, float]:
    """The ``loss`` scalars the trainer wrote to ``<model_dir>/logs/train``, by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(model_dir / "logs" / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors("loss")}


def label_entropy(csv: Path) -> float:
    """The cross-entropy of always predicting the label frequencies of ``csv`` (last column)."""
    import collections
    import math

    labels = [line.rsplit(",", 1)[1] for line in csv.read_text().splitlines()[1:] if line]
    counts = collections.Counter(labels).values()
    return -sum(c / len(labels) * math.log(c / len(labels)) for c in counts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- startup: never hang silently -------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_a_peer_that_never_starts_fails_the_task_with_its_name(runs, data4, tmp_path):
    """Three tasks of clusters whose other members never start (their ports are bound by this
    test and never listen): the MWMS leader (its registration times out), an MWMS worker (its
    leader never listens) and the ps chief (no worker or ps listens). Each exits 138 within the
    peer timeout plus start-up, naming the missing tasks; none hangs."""
    dead = [socket.socket() for _ in range(6)]
    for s in dead:
        s.bind(("127.0.0.1", 0))
    d = [f"127.0.0.1:{s.getsockname()[1]}" for s in dead]
    shapes = {
        "mwms-leader": ({"worker": ["127.0.0.1:{own}", d[0]]}, "worker", 0, [("worker:1", d[0])]),
        "mwms-worker": ({"worker": [d[1], "127.0.0.1:{own}"]}, "worker", 1, [("worker:0", d[1])]),
        "ps-chief": (
            {"chief": ["127.0.0.1:{own}"], "worker": d[2:4], "ps": d[4:6]},
            "chief",
            0,
            [("worker:0", d[2]), ("worker:1", d[3]), ("ps:0", d[4]), ("ps:1", d[5])],
        ),
    }
    started = {}
    try:
        for name, (cluster, task_type, index, _) in shapes.items():
            own = free_port()
            cluster = {k: [a.format(own=own) for a in v] for k, v in cluster.items()}
            tf_config = json.dumps(
                {"cluster": cluster, "task": {"type": task_type, "index": index}}
            )
            args = ["train", "--data", str(data4), "--model-dir", str(tmp_path / name)]
            if name == "ps-chief":  # the flag, which wins over the variable
                env = base_env(TF_CONFIG=tf_config, **{peers.ENV_TIMEOUT: "600"})
                args += ["--peer-timeout", str(PEER_TIMEOUT)]
            else:
                env = base_env(TF_CONFIG=tf_config, **{peers.ENV_TIMEOUT: str(PEER_TIMEOUT)})
            started[name] = runs(args, env)
        for name, (_, _, _, missing) in shapes.items():
            run = started[name]
            code = run.wait(timeout=PEER_TIMEOUT + 150)
            elapsed = run.ended - run.started
            print(f"{name}: exit {code} after {elapsed:.1f} s")
            err = "\n".join(run.err)
            assert code == EXIT_RETRYABLE, run
            for task, address in missing:
                assert f"{task} at {address} unreachable after {PEER_TIMEOUT} s" in err, run
            assert "TFPIPES_PEER_TIMEOUT sets the wait" in err
    finally:
        for s in dead:
            s.close()


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_too_few_shards_for_the_workers_is_a_user_error_before_any_wait(runs, tmp_path):
    data = make_data(tmp_path, 300, 1)
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    env = base_env(
        TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    )
    run = runs(["train", "--data", str(data), "--model-dir", str(tmp_path / "m")], env)
    run.expect(EXIT_USER_ERROR, timeout=100)
    assert (
        f"tfpipes train: error: {data}: the train split has 1 shard file(s) but 2 workers each "
        "need at least one; preprocess again with --num-shards 2 or more"
    ) in "\n".join(run.err)
    assert "waiting" not in "\n".join(run.err)  # it did not wait for the peer first


# Tasks run through this wrapper when a test needs to play the pod's restart policy or to hide a
# death from local-cluster. ``$TASK_MODES`` maps a task to "restart" (its trainer is started
# again when it dies, as the Training Operator recreates a pod that exited with a retryable
# code) or "linger" (the wrapper stays up after its trainer died, so local-cluster does not end
# the job: the others must notice by themselves); other tasks just run the trainer. It prints
# the pid of each trainer it starts, which the tests kill.
TASK_WRAPPER = textwrap.dedent(
    """
    import ctypes, json, os, signal, subprocess, sys, time
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    name = "%s:%d" % (task["type"], task["index"])
    mode = json.loads(os.environ["TASK_MODES"]).get(name, "exec")
    cmd = [sys.executable, "-m", "tfpipes.cli", "train", *sys.argv[1:]]
    if mode == "exec":
        os.execv(cmd[0], cmd)

    def die_with_me():
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    while True:
        child = subprocess.Popen(cmd, preexec_fn=die_with_me)
        print("trainer pid %d" % child.pid, flush=True)
        code = child.wait()
        if mode == "linger":
            print("trainer exited %d; lingering" % code, flush=True)
            time.sleep(600)
        print("trainer exited %d; restarting" % code, flush=True)
    """
)


def wrapped(tmp_path: Path, modes: dict) -> tuple[list[str], dict]:
    """(command prefix, env) that run every task through :data:`TASK_WRAPPER`."""
    wrapper = tmp_path / "task.py"
    wrapper.write_text(TASK_WRAPPER)
    return ["--full-command", "--", PY, str(wrapper)], base_env(TASK_MODES=json.dumps(modes))


def mwms_args(data4, model, checkpoint_every: int = 20) -> list[str]:
    """`tfpipes train` arguments of the two-worker MWMS runs below (``data4``, into ``model``):
    batch 32, a log line every 20 steps, a chunk every 10."""
    args = ["--data", str(data4), "--model-dir", str(model), "--batch-size", "32"]
    args += ["--log-every", "20", "--steps-per-loop", "10"]
    return args + ["--checkpoint-every", str(checkpoint_every)]


def at_step(task: str, step: int, act: Callable[[Run], bool]):
    """An ``on_line`` callback that calls ``act(run)`` once ``task`` logs step ``step`` or
    later, until it returns True (it did what it does), and the list that callback appends the
    time of it to (monotonic; one entry at the most)."""
    done: list[float] = []

    def on_line(line: str, run: Run) -> None:
        m = re.match(rf"\[{task}\] step (\d+)/", line)
        if m and int(m.group(1)) >= step and not done and act(run):
            done.append(time.monotonic())

    return on_line, done


def _signal(task: str, sig: int) -> Callable[[Run], bool]:
    """An ``act`` for :func:`at_step`: send ``sig`` to ``task``'s process."""

    def send(run: Run) -> bool:
        os.kill(run.pids[task], sig)
        return True

    return send


def _rerun_resumes(runs, args: list[str], model: Path, step: int, train_steps: int) -> None:
    """The same two-worker command again (``args``, training to ``train_steps``) finishes, and
    worker:0 resumed from ``model``'s checkpoint of ``step``."""
    second = runs(
        ["local-cluster", "--workers", "2", "--grace", "2", "--timeout", "240", "--",
         *args, "--train-steps", str(train_steps)],
    )  # fmt: skip
    second.expect(0, timeout=250)
    resumed = [line for line in second.of("worker:0") if line.startswith("resumed from")]
    assert resumed == [f"resumed from {model}/checkpoints/ckpt-{step} at step {step}"], second


# --- MultiWorkerMirroredStrategy ---------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_two_mwms_workers_follow_the_single_worker_loss_trajectory(runs, tmp_path):
    """Same global batch, same seed, 1 worker vs 2 (local-cluster), loss compared per step.

    Why the trajectories can match exactly: the data set has 64 train rows in 2 shards of 32
    and the global batch is 64, so every step is a full-batch step: one worker sees all 64
    rows, and with FILE sharding each of two workers sees its whole 32-row shard (a 32-row
    per-replica batch). The shuffle only permutes rows inside a batch, the loss is the mean
    over the global batch, and MWMS all-reduces (sums) the gradients: both runs compute the
    same gradient and differ only in floating-point summation order. A mini-batch run could
    not be compared this tightly: two workers draw different rows than one worker would.
    """
    data = make_data(tmp_path / "equal", 78, 2, seed=3)
    rows = train_rows(data)
    assert rows == [32, 32], rows  # what makes the full-batch comparison above hold
    args = ["--data", str(data), "--batch-size", "64", "--train-steps", "30", "--seed", "7"]
    args += ["--log-every", "1", "--steps-per-loop", "1", "--checkpoint-every", "10"]
    one, two = tmp_path / "one-worker", tmp_path / "two-workers"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    single = runs(["train", *args, "--model-dir", str(one)])
    cluster = runs(
        ["local-cluster", "--workers", "2", "--grace", "2", "--timeout", "240", "--",
         *args, "--model-dir", str(two)],
        env=base_env(TMPDIR=str(scratch)),
    )  # fmt: skip
    single.expect(0, timeout=240)
    cluster.expect(0, timeout=250)

    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 31))
    diff = max(abs(a[s] - b[s]) for s in a)
    print(f"MWMS 2 workers vs 1 worker: max |loss difference| over 30 steps = {diff:.2e}")
    assert diff < 1e-6, (a, b)
    assert a[30] < a[1] - 0.05  # it did train
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["step"] == 30 and m2["loss"] == pytest.approx(m1["loss"], abs=1e-5)

    # Only the chief wrote what counts: the model dir looks like the single worker's, with
    # one writer of summaries; the other worker's checkpoints went to a throwaway directory
    # (under TMPDIR), removed at its end.
    def tree(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if "tfevents" not in p.name}

    assert tree(two) == tree(one)
    assert len(list((two / "logs" / "train").glob("*tfevents*"))) == 1
    assert not list(scratch.iterdir())
    assert "resumed" not in str(cluster)


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_killed_mwms_worker_fails_the_cluster_fast_and_a_rerun_resumes(runs, data4, tmp_path):
    """SIGKILL worker:1 of a running 2-worker MWMS job once a checkpoint exists: local-cluster
    exits within a bound naming it; running the same command again resumes from the newest
    checkpoint and finishes."""
    model = tmp_path / "model"
    args = mwms_args(data4, model)
    # ckpt-20 is saved before step 40
    kill_after_a_checkpoint, killed = at_step("worker:0", 40, _signal("worker:1", signal.SIGKILL))
    first = runs(
        ["local-cluster", "--workers", "2", "--grace", "2", "--timeout", "240", "--",
         *args, "--train-steps", "100000"],
        on_line=kill_after_a_checkpoint,
    )  # fmt: skip
    code = first.wait(timeout=250)
    assert killed, first
    detected = first.ended - killed[0]
    print(f"MWMS: worker:1 killed -> local-cluster exited {code} after {detected:.1f} s")
    assert code == 128 + signal.SIGKILL, first
    assert "tfpipes local-cluster: worker:1 was killed by signal 9 (SIGKILL)" in first.err
    assert detected < 60
    step = latest_checkpoint_step(model)
    assert step >= 20

    _rerun_resumes(runs, args, model, step, step + 40)
    assert json.loads((model / "metrics.json").read_text())["step"] == step + 40


def _sigkill_unseen(runs, data4, model: Path, victim: str, at: int) -> tuple[Run, float]:
    """Two MWMS workers train into ``model``; once the other worker logs step ``at``,
    ``victim``'s trainer is SIGKILLed while its wrapper stays up (local-cluster cannot see the
    death). Returns the run, which exited 138, and the time of the kill (monotonic)."""
    other = "worker:0" if victim == "worker:1" else "worker:1"
    args = mwms_args(data4, model)
    pids: dict[str, int] = {}

    def kill_the_trainer(run: Run) -> bool:
        if not pids:
            return False  # its pid is not known yet: at a later line
        os.kill(pids[victim], signal.SIGKILL)
        return True

    kill_at_step, killed = at_step(other, at, kill_the_trainer)

    def kill_unseen(line: str, run: Run) -> None:
        m = re.match(rf"\[{victim}\] trainer pid (\d+)", line)
        if m:
            pids[victim] = int(m.group(1))
        kill_at_step(line, run)

    prefix, env = wrapped(model.parent, {victim: "linger"})
    run = runs(
        ["local-cluster", "--workers", "2", "--grace", "2", "--timeout", "200", *prefix,
         *args, "--train-steps", "100000"],
        env=env,
        on_line=kill_unseen,
    )  # fmt: skip
    run.expect(EXIT_RETRYABLE, timeout=220)
    assert killed, run
    return run, killed[0]


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_mwms_survivor_detects_a_dead_peer_by_itself(runs, data4, tmp_path):
    """What a TFJob relies on, with no launcher to stop the others: worker:1's trainer is
    SIGKILLed while its wrapper stays up (local-cluster cannot see the death), and worker:0
    fails on its own within a bound, with the retryable exit code and a message saying why."""
    run, killed = _sigkill_unseen(runs, data4, tmp_path / "model", victim="worker:1", at=40)
    detected = run.ended - killed
    print(f"MWMS: worker:1 killed unseen -> worker:0 failed by itself, run over {detected:.1f} s")
    assert "tfpipes local-cluster: worker:0 exited with code 138" in run.err, run
    assert any("a peer of the cluster became unreachable" in x for x in run.of("worker:0")), run
    assert detected < 60


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_a_survivor_of_the_killed_mwms_chief_names_the_newest_checkpoint(runs, data4, tmp_path):
    """Only the chief tracks the checkpoints it commits; worker:1, whose chief (worker:0) is
    SIGKILLed unseen by the launcher, used to say "resume from the start (no checkpoint yet)".
    It reads the checkpoint state in the model dir and names the newest checkpoint there."""
    model = tmp_path / "model"
    run, _ = _sigkill_unseen(runs, data4, model, victim="worker:0", at=60)  # ckpt-20, -40 exist
    step = latest_checkpoint_step(model)
    assert step >= 40
    hint = f"run again to resume from {model}/checkpoints/ckpt-{step}"
    errors = [x for x in run.of("worker:1") if "became unreachable" in x]
    assert errors and errors[-1].endswith(hint), run
    assert "no checkpoint yet" not in str(run)


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_sigterm_to_one_mwms_worker_stops_every_worker_at_one_checkpoint(runs, data4, tmp_path):
    """Preemption under MWMS: SIGTERM reaches worker:1 only. The workers agree (an all-reduce
    after each chunk) to stop at the same step, save that step together (a save needs every
    worker), and exit 138 within seconds, not when the grace period runs out; each names the
    checkpoint. A rerun resumes from exactly that step."""
    model = tmp_path / "model"
    args = mwms_args(data4, model, checkpoint_every=1000)
    preempt_worker1, signalled = at_step("worker:0", 40, _signal("worker:1", signal.SIGTERM))
    first = runs(
        ["local-cluster", "--workers", "2", "--grace", "60", "--timeout", "240", "--",
         *args, "--train-steps", "100000"],
        on_line=preempt_worker1,
    )  # fmt: skip
    first.expect(EXIT_RETRYABLE, timeout=250)
    assert signalled, first
    took = first.ended - signalled[0]
    print(f"MWMS: SIGTERM to worker:1 -> cluster saved and exited 138 after {took:.1f} s")
    assert took < 30  # the grace period (60 s) did not run out: no SIGKILL was needed
    assert "ignored SIGTERM" not in str(first)
    step = latest_checkpoint_step(model)
    assert 40 <= step < 1000 and step % 10 == 0  # a SIGTERM save, at a chunk boundary
    w1 = [x for x in first.of("worker:1") if "stopped by SIGTERM" in x]
    assert w1 and f"at step {step}; checkpoint of step {step} saved by the chief" in w1[-1], first
    w0 = [x for x in first.of("worker:0") if "stopped with the cluster" in x]
    expected = f"at step {step}; checkpoint {model}/checkpoints/ckpt-{step} saved"
    assert w0 and expected in w0[-1], first
    assert "exited with code 138" in "\n".join(first.err)

    _rerun_resumes(runs, args, model, step, step + 20)


# --- ParameterServerStrategy -----------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(360)
def test_parameter_servers_partition_converge_and_survive_failures(runs, data4, tmp_path):
    """chief + 2 workers + 2 ps, in one job and its rerun:

    1. the first dense kernel (13 x 16384 floats, above MinSizePartitioner's 2 x 256 KiB) is
       split across both parameter servers (the chief logs where each shard lives);
    2. worker:1 is killed: the coordinator carries on with worker:0, and uses worker:1 again
       once it is back (steps by worker:1 after its restart);
    3. then ps:1 is killed: the chief fails by itself with exit 138 naming ps:1;
    4. the rerun resumes from the last checkpoint, converges (eval accuracy far above the
       majority class) and its checkpoint exports as a plain single-process SavedModel.
    """
    model = tmp_path / "model"
    args = ["--data", str(data4), "--model-dir", str(model), "--hidden", "16384"]
    args += ["--log-every", "25", "--checkpoint-every", "50", "--steps-per-loop", "10"]
    state = {"pids": {}, "killed": {}, "restarts": 0, "back_steps": 0}
    lock = threading.Lock()

    def drive(line: str, run: Run) -> None:
        with lock:
            m = re.match(r"\[(worker:1|ps:1)\] trainer pid (\d+)", line)
            if m:
                state["pids"][m.group(1)] = int(m.group(2))
                return
            if line.startswith("[worker:1] trainer exited") and "restarting" in line:
                state["restarts"] += 1
                return
            m = re.match(r"\[chief:0\] step (\d+)/\d+ .*worker:1 (\d+)\)$", line)
            if not m:
                return
            step, by_worker1 = int(m.group(1)), int(m.group(2))
            if "worker:1" not in state["killed"] and step >= 25 and "worker:1" in state["pids"]:
                os.kill(state["pids"]["worker:1"], signal.SIGKILL)
                state["killed"]["worker:1"] = (time.monotonic(), step)
            elif state["restarts"] and "ps:1" not in state["killed"] and by_worker1:
                # worker:1 is back and doing steps; once a checkpoint follows, kill ps:1.
                state["back_steps"] += by_worker1
                if step >= state["killed"]["worker:1"][1] + 50:  # a checkpoint exists
                    os.kill(state["pids"]["ps:1"], signal.SIGKILL)
                    state["killed"]["ps:1"] = (time.monotonic(), step)

    prefix, env = wrapped(tmp_path, {"worker:1": "restart", "ps:1": "linger"})
    first = runs(
        ["local-cluster", "--workers", "2", "--ps", "2", "--grace", "2", "--timeout", "300",
         *prefix, *args, "--train-steps", "100000"],
        env=env,
        on_line=drive,
    )  # fmt: skip
    code = first.wait(timeout=320)
    chief = "\n".join(first.of("chief:0"))

    # 1. Partitioned across both parameter servers.
    m = re.search(
        r"partitioned \S+/hidden_0/kernel \[(\d+), 16384\] across "
        r"(ps:\d) \[(\d+), 16384\], (ps:\d) \[(\d+), 16384\]",
        chief,
    )
    assert m, first
    rows, ps_a, rows_a, ps_b, rows_b = m.groups()
    assert {ps_a, ps_b} == {"ps:0", "ps:1"} and int(rows_a) + int(rows_b) == int(rows), first
    # 2. worker:1 died, came back and took steps again.
    assert "worker:1" in state["killed"] and state["restarts"] == 1, first
    assert state["back_steps"] > 0, first
    # 3. ps:1 killed: the chief failed by itself, naming it, with the retryable code.
    assert "ps:1" in state["killed"], first
    detected = first.ended - state["killed"]["ps:1"][0]
    print(f"PS: ps:1 killed -> chief exited after {detected:.1f} s")
    assert code == EXIT_RETRYABLE, first
    assert "[local-cluster] chief:0 exited with code 138" in "\n".join(first.out)
    ps1 = re.search(r"ps:1 at (127\.0\.0\.1:\d+)", chief)
    # On failure, our own lines: TensorFlow's gRPC errors after the exit would bury them.
    ours = "\n".join(
        line
        for line in chief.splitlines()
        if not re.match(r"[EWI]\d{4} |:UNKNOWN:|Additional|This could", line)
    )
    assert ps1 and f"parameter server ps:1 at {ps1.group(1)} failed" in chief, ours[-4000:]
    assert detected < 60
    step = latest_checkpoint_step(model)
    assert step >= state["killed"]["ps:1"][1] - 50

    # 4. Rerun: resume, converge.
    second = runs(
        ["local-cluster", "--workers", "2", "--ps", "2", "--grace", "2", "--timeout", "240",
         "--", *args, "--train-steps", str(step + 50)],
    )  # fmt: skip
    second.expect(0, timeout=250)
    resumed = [line for line in second.of("chief:0") if line.startswith("resumed from")]
    assert resumed == [f"resumed from {model}/checkpoints/ckpt-{step} at step {step}"], second
    metrics = json.loads((model / "metrics.json").read_text())
    print(f"PS: eval accuracy {metrics['accuracy']:.3f} at step {metrics['step']}")
    assert metrics["step"] >= step + 50
    assert metrics["accuracy"] > 0.85 > metrics["majority_baseline_accuracy"] + 0.3
    # Converged, measured against a baseline with margin: the eval loss (the whole eval split,
    # not one noisy batch) is far below the loss of predicting the label frequencies (their
    # entropy, ~1.1 here). Comparing two logged batch losses of an asynchronous PS run failed
    # by chance on a loaded machine (0.4714 at the end vs 0.3867 at step 25).
    entropy = label_entropy(data4.parent / "data.csv")
    print(f"PS: eval loss {metrics['loss']:.3f}, label entropy {entropy:.3f}")
    assert metrics["loss"] < 0.7 * entropy, (metrics, entropy)
    trajectory = losses(model)
    assert min(trajectory) < step < max(trajectory)  # summaries of both runs

    # The ps checkpoint restores into a plain, single-process model: export (which reloads
    # the SavedModel and compares it with the checkpoint model) works. The tolerance allows
    # for a float32 rounding step at this wide layer's logits (~1.5e-5 at |logit| ~ 100),
    # which export's default absolute 1e-5 does not.
    from tfpipes.export import ExportConfig, export

    result = export(
        ExportConfig(str(model), str(tmp_path / "serving"), 1, str(data4), tolerance=1e-4)
    )
    print(f"PS: exported from {result.checkpoint}, max abs diff {result.max_abs_diff:.2g}")
    assert result.verified_examples > 0
    assert (tmp_path / "serving" / "1" / "saved_model.pb").exists()


# --- ParameterServerStrategy with the data set on gs:// ---------------------------------------


@pytest.mark.cluster
@pytest.mark.gcs
@pytest.mark.timeout(420)
def test_parameter_servers_train_from_a_gcs_data_set_into_a_gcs_model_dir(
    runs, data4, gcs_bucket, tmp_path
):
    """Data and model dir on gs:// (the fake-gcs-server): each worker streams its own shards
    through tfpipes' storage layer (TensorFlow's own GCS filesystem is never handed a gs://
    path; no worker copies the data set), the checkpoints and metrics land in the bucket, and
    a rerun resumes from them."""
    from tfpipes import storage

    data, model = f"{gcs_bucket}/data4", f"{gcs_bucket}/runs/ps"
    storage.publish_dir(str(data4), data)
    caches = tmp_path / "caches"
    caches.mkdir(mode=0o700)
    env = base_env(TFPIPES_STREAM_DIR=str(caches))
    args = ["--data", data, "--model-dir", model, "--hidden", "32", "--log-every", "50"]
    args += ["--checkpoint-every", "100", "--steps-per-loop", "10"]

    def cluster(steps: int) -> Run:
        run = runs(
            ["local-cluster", "--workers", "2", "--ps", "1", "--grace", "2", "--timeout", "200",
             "--", *args, "--train-steps", str(steps)],
            env=env,
        )  # fmt: skip
        run.expect(0, timeout=210)
        return run

    first = cluster(200)
    for worker in ("worker:0", "worker:1"):
        said = [line for line in first.of(worker) if line.startswith(f"{worker} streams its")]
        assert said and f"train shard(s) of {data} through {caches}" in said[0], first
    assert not [p for p in caches.rglob("*") if p.is_file()]  # the caches removed their files
    metrics = json.loads(storage.read_text(f"{model}/metrics.json"))
    assert metrics["step"] >= 200
    assert metrics["accuracy"] > metrics["majority_baseline_accuracy"] + 0.2, metrics
    assert storage.exists(f"{model}/checkpoints/checkpoint")

    second = cluster(300)
    resumed = [line for line in second.of("chief:0") if line.startswith("resumed from")]
    assert resumed and resumed[0].endswith(f"at step {metrics['step']}"), second
    assert json.loads(storage.read_text(f"{model}/metrics.json"))["step"] >= 300


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_parameter_servers_get_every_summary_and_check_a_resume(runs, data4, tmp_path):
    """Drifts fixed (one cadence and one compatibility config for every runner): a ps run
    writes learning_rate with its train summaries and the eval metrics to TensorBoard, writes
    model_config.json with the run key, and a resume with another --cache is refused with the
    one-line error before anything is written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = tmp_path / "model"
    args = ["--data", str(data4), "--model-dir", str(model), "--hidden", "16"]
    args += ["--log-every", "10", "--checkpoint-every", "20", "--steps-per-loop", "5"]

    def cluster(*extra: str) -> Run:
        return runs(
            ["local-cluster", "--workers", "1", "--ps", "1", "--grace", "2", "--timeout", "200",
             "--", *args, *extra],
        )  # fmt: skip

    cluster("--train-steps", "40").expect(0, timeout=210)
    tags = {}
    for split in ("train", "eval"):
        acc = EventAccumulator(str(model / "logs" / split), size_guidance={"tensors": 0})
        acc.Reload()
        tags[split] = set(acc.Tags()["tensors"])
    assert {"loss", "learning_rate", "examples_per_second"} <= tags["train"], tags
    assert {"loss", "accuracy"} <= tags["eval"], tags
    config = json.loads((model / "model_config.json").read_text())
    assert config["run"] == {"cache": False, "mixed_precision": ""}
    before = sorted(os.listdir(model / "checkpoints"))

    refused = cluster("--train-steps", "60", "--cache")
    refused.expect(EXIT_USER_ERROR, timeout=210)
    errors = [x for x in refused.of("chief:0") if "error:" in x]
    assert errors and "different setting of --cache / --mixed-precision" in errors[0], refused
    assert not any("Traceback" in x for x in refused.of("chief:0")), refused
    assert sorted(os.listdir(model / "checkpoints")) == before
