"""local-cluster: real processes, real TF gRPC on 127.0.0.1, and nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tfpipes.cluster.local import (
    EXIT_TIMEOUT,
    Task,
    cluster_spec,
    cluster_tasks,
    run_cluster,
    tf_config,
)

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# A standalone MWMS script: "sum" does three all-reduces of (replica id + 1) * step and prints
# them; "loop" all-reduces for up to 60 s, printing its pid at each step.
MWMS_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    mode, ready_file = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
    if ready_file:
        open(ready_file, "w").close()
    print("creating strategy", flush=True)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    print("replicas", strategy.num_replicas_in_sync)

    @tf.function
    def step(x):
        def replica_fn(x):
            ctx = tf.distribute.get_replica_context()
            return tf.cast(ctx.replica_id_in_sync_group + 1, tf.float32) * x
        per_replica = strategy.run(replica_fn, args=(x,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    if mode == "sum":
        for i in range(1, 4):
            print(f"step {i} sum {float(step(tf.constant(float(i)))):g}")
        sys.exit(0)
    deadline, i = time.monotonic() + 60, 0
    while time.monotonic() < deadline:
        i += 1
        step(tf.constant(1.0))
        print(f"step {i} pid {os.getpid()}")
    """
)

# A standalone ParameterServerStrategy script: ps and workers serve forever (the launcher ends
# them); the chief schedules five increments of a variable that lives on the ps.
PS_SCRIPT = textwrap.dedent(
    """
    import os
    print("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL"), flush=True)
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if resolver.task_type in ("worker", "ps"):
        tf.distribute.Server(
            resolver.cluster_spec(), job_name=resolver.task_type, task_index=resolver.task_id,
            protocol="grpc", start=True,
        ).join()
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        total = tf.Variable(0.0)

    @tf.function
    def step():
        return strategy.run(lambda: total.assign_add(1.0))

    for _ in range(5):
        coordinator.schedule(step)
    coordinator.join()
    print(f"total {total.numpy():g} on {total.device}")
    """
)

# A server that never exits, ignores SIGTERM and leaves a grandchild in its process group.
STUBBORN_SERVER = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    print(f"grandchild {child.pid}", flush=True)
    if len(sys.argv) > 1:  # a directory where to say "ready"
        open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()
    time.sleep(300)
    """
)


class Capture:
    """A text stream for run_cluster's ``out`` that keeps lines and can react to them."""

    def __init__(self, on_line=None):
        self.lines: list[str] = []
        self.on_line = on_line
        self._buf = ""

    def write(self, text: str) -> None:
        self._buf += text
        *done, self._buf = self._buf.split("\n")
        for line in done:
            self.lines.append(line)
            if self.on_line:
                self.on_line(line)

    def flush(self) -> None:
        pass

    def of(self, task: str) -> list[str]:
        prefix = f"[{task}] "
        return [line[len(prefix) :] for line in self.lines if line.startswith(prefix)]

    def __str__(self) -> str:
        return "\n".join(self.lines)


def is_gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet (an orphan waiting for init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def assert_all_gone(pids, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not all(is_gone(p) for p in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if not is_gone(p)]}"
        time.sleep(0.05)


def assert_reaped(pids) -> None:
    """Our own children: reaped, so signalling them finds no process at all."""
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def grandchild_pids(capture: Capture) -> list[int]:
    return [
        int(m.group(1)) for m in map(re.compile(r"grandchild (\d+)$").search, capture.lines) if m
    ]


@pytest.fixture
def mwms_script(tmp_path):
    path = tmp_path / "mwms.py"
    path.write_text(MWMS_SCRIPT)
    return path


# --- pure parts ----------------------------------------------------------------------------


def test_tf_config_is_shaped_like_the_training_operators():
    tasks = cluster_tasks(workers=2, ps=2, chief=True)
    assert [t.name for t in tasks] == ["ps:0", "ps:1", "worker:0", "worker:1", "chief:0"]
    addresses = {t: f"127.0.0.1:{1000 + i}" for i, t in enumerate(tasks)}
    cluster = cluster_spec(addresses)
    assert cluster == {
        "chief": ["127.0.0.1:1004"],
        "worker": ["127.0.0.1:1002", "127.0.0.1:1003"],
        "ps": ["127.0.0.1:1000", "127.0.0.1:1001"],
    }
    assert json.loads(tf_config(cluster, Task("worker", 1))) == {
        "cluster": cluster,
        "task": {"type": "worker", "index": 1},
        "environment": "cloud",
    }
    assert list(cluster_spec({Task("worker", 0): "a"})) == ["worker"]
    with pytest.raises(ValueError, match="chief"):
        cluster_tasks(workers=1, ps=1, chief=False)


# --- real processes, no TensorFlow -------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(30)
def test_ps_mode_ends_when_chief_exits_and_stops_stubborn_servers(tmp_path):
    server = tmp_path / "server.py"
    server.write_text(STUBBORN_SERVER)

    ready = tmp_path / "ready"
    ready.mkdir()
    # The chief waits for both servers to be ready, so that they do ignore the SIGTERM.
    chief = textwrap.dedent(
        f"""
        import json, os, time
        deadline = time.monotonic() + 20
        while len(os.listdir({str(ready)!r})) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        print(json.loads(os.environ["TF_CONFIG"])["task"])
        """
    )

    def argv(task_type, index):
        return [PY, "-c", chief] if task_type == "chief" else [PY, str(server), str(ready)]

    out = Capture()
    start = time.monotonic()
    result = run_cluster(argv, workers=1, ps=1, chief=True, grace=1.0, out=out, timeout=25)
    assert result.exit_code == 0, out
    assert time.monotonic() - start < 15
    assert out.of("chief:0") == ["{'type': 'chief', 'index': 0}"]
    assert "[local-cluster] ps:0 ignored SIGTERM for 1 s; killed" in out.lines
    assert_reaped(result.pids.values())
    grandchildren = grandchild_pids(out)
    assert len(grandchildren) == 2
    assert_all_gone(grandchildren)


@pytest.mark.cluster
@pytest.mark.timeout(30)
def test_timeout_bounds_the_run():
    out = Capture()
    start = time.monotonic()
    result = run_cluster(
        lambda t, i: [PY, "-c", "import time; time.sleep(300)"],
        workers=2,
        timeout=1.5,
        grace=1.0,
        out=out,
    )
    assert result.exit_code == EXIT_TIMEOUT
    assert "timed out after 1.5 s; still running: worker:0, worker:1" == result.message
    assert time.monotonic() - start < 10
    assert_reaped(result.pids.values())


def run_cli(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.Popen(
        [PY, "-m", "tfpipes.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.cluster
@pytest.mark.timeout(30)
def test_cli_passes_exit_code_through_and_names_the_task():
    script = (
        "import json, os, sys; sys.exit(json.loads(os.environ['TF_CONFIG'])['task']['index'] * 5)"
    )
    proc = run_cli("local-cluster", "--workers", "2", "--full-command", "--", PY, "-c", script)
    stdout, stderr = proc.communicate(timeout=25)
    assert proc.returncode == 5, stderr
    assert "tfpipes local-cluster: worker:1 exited with code 5" in stderr
    assert "[local-cluster] worker:1 exited with code 5; stopping the other tasks" in stdout


@pytest.mark.cluster
@pytest.mark.timeout(30)
def test_sigterm_to_launcher_stops_every_task(tmp_path):
    server = tmp_path / "server.py"
    server.write_text(STUBBORN_SERVER)
    proc = run_cli(
        "local-cluster", "--workers", "2", "--grace", "1", "--full-command", "--", PY, str(server)
    )
    pids: list[int] = []
    deadline = time.monotonic() + 20
    # Task pids from "[local-cluster] started worker:0 (pid N)", grandchildren from the tasks.
    while len(pids) < 4:
        assert time.monotonic() < deadline, pids
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        pids += [int(a or b) for a, b in re.findall(r"\(pid (\d+)\)|grandchild (\d+)$", line)]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "terminated by SIGTERM; all tasks stopped" in stderr
    assert_all_gone(pids)


# --- real TensorFlow, MultiWorkerMirroredStrategy over gRPC ------------------------------


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_two_mwms_workers_all_reduce(mwms_script):
    out = Capture()
    result = run_cluster(
        lambda t, i: [PY, str(mwms_script), "sum"], workers=2, timeout=50, grace=2.0, out=out
    )
    assert result.exit_code == 0, out
    for task in ("worker:0", "worker:1"):
        lines = out.of(task)
        assert "replicas 2" in lines, out
        # Each step sums (replica id + 1) * step over both workers: 3 * step.
        assert [line for line in lines if line.startswith("step")] == [
            "step 1 sum 3",
            "step 2 sum 6",
            "step 3 sum 9",
        ], out
    assert_reaped(result.pids.values())


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_failing_task_stops_a_worker_blocked_in_mwms(mwms_script, tmp_path):
    ready = tmp_path / "worker0-ready"
    # Worker 1 exits 3 once worker 0 is about to block in the MWMS constructor, waiting for a
    # peer that will never come: only the launcher can end worker 0.
    failing = f"import os,sys,time\nwhile not os.path.exists({str(ready)!r}): time.sleep(0.05)\n"
    failing += "time.sleep(1); sys.exit(3)"

    def argv(task_type, index):
        return [PY, str(mwms_script), "sum", str(ready)] if index == 0 else [PY, "-c", failing]

    out = Capture()
    start = time.monotonic()
    result = run_cluster(argv, workers=2, timeout=50, grace=2.0, out=out)
    assert (result.exit_code, result.failed_task) == (3, "worker:1"), out
    assert result.message == "worker:1 exited with code 3"
    assert "[local-cluster] worker:1 exited with code 3; stopping the other tasks" in out.lines
    assert "creating strategy" in out.of("worker:0")
    assert time.monotonic() - start < 30
    assert_reaped(result.pids.values())


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_killed_worker_fails_the_run_fast(mwms_script):
    killed_at: list[float] = []

    def kill_at_step_5(line: str) -> None:
        m = re.fullmatch(r"\[worker:1\] step 5 pid (\d+)", line)
        if m:
            os.kill(int(m.group(1)), signal.SIGKILL)
            killed_at.append(time.monotonic())

    out = Capture(kill_at_step_5)
    result = run_cluster(
        lambda t, i: [PY, str(mwms_script), "loop"], workers=2, timeout=50, grace=2.0, out=out
    )
    assert killed_at, out
    assert time.monotonic() - killed_at[0] < 30
    assert (result.exit_code, result.failed_task) == (128 + signal.SIGKILL, "worker:1"), out
    assert result.message == "worker:1 was killed by signal 9 (SIGKILL)"
    assert_reaped(result.pids.values())


@pytest.mark.cluster
@pytest.mark.timeout(30)
def test_runs_from_a_thread_without_signal_handlers():
    # run_cluster only installs SIGTERM/SIGHUP handlers in the main thread.
    results = []
    thread = threading.Thread(
        target=lambda: results.append(
            run_cluster(lambda t, i: [PY, "-c", "pass"], workers=1, timeout=20, out=Capture())
        )
    )
    thread.start()
    thread.join(timeout=25)
    assert results and results[0].exit_code == 0


# TensorFlow's C++ INFO and WARNING lines (errors do show at level 2): absl's "WARNING: All log
# messages before absl::InitializeLog()", glog-style "I0000 00:00:... file.cc:123] ...",
# cpu_feature_guard's second line, oneDNN's.
TF_NOTICE = re.compile(
    r"absl::InitializeLog|^[IW]\d{4} \d\d:\d\d:\d\d|To enable the following instructions"
    r"|oneDNN|cpu_feature_guard"
)


@pytest.mark.cluster
@pytest.mark.timeout(60)
def test_parameter_server_job_ends_with_the_chief(tmp_path, monkeypatch):
    # Whether TensorFlow prints notices depends on the CPU: with the variable unset here (TF's
    # own default is 0, everything), the launcher's level must be what keeps them out.
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    script = tmp_path / "ps.py"
    script.write_text(PS_SCRIPT)
    out = Capture()
    result = run_cluster(
        lambda t, i: [PY, str(script)], workers=1, ps=1, chief=True, timeout=50, grace=2.0, out=out
    )
    assert result.exit_code == 0, out
    chief = out.of("chief:0")
    assert chief[0] == "TF_CPP_MIN_LOG_LEVEL 2", out
    assert "total 5 on /job:ps/replica:0/task:0/device:CPU:0" in chief, out
    notices = [line for line in out.lines if TF_NOTICE.search(line.split("] ", 1)[-1])]
    assert not notices, out
    # The worker and the ps never exit by themselves: the launcher ended them.
    assert "[local-cluster] chief:0 finished" in out.lines
    assert not any("before the job finished" in line for line in out.lines), out
    assert_reaped(result.pids.values())


@pytest.mark.cluster
@pytest.mark.timeout(30)
@pytest.mark.parametrize(("flags", "level"), [((), "2"), (("-v",), "2"), (("-vv",), "0")])
def test_cli_sets_the_tasks_tensorflow_log_level_by_verbosity(flags, level, monkeypatch):
    # The user's own TF_CPP_MIN_LOG_LEVEL=0 does not make a plain run loud; -vv does.
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    script = "import os; print('level', os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    proc = run_cli(
        *flags, "local-cluster", "--workers", "1", "--full-command", "--", PY, "-c", script
    )
    stdout, stderr = proc.communicate(timeout=25)
    assert proc.returncode == 0, stderr
    assert f"[worker:0] level {level}" in stdout.splitlines(), stdout


def test_tf_log_level_keeps_a_quieter_choice():
    from tfpipes.tf_log import tf_log_level

    assert [tf_log_level(0, v) for v in (None, "0", "1", "2", "3", "x")] == list("222232")
    assert tf_log_level(2, "3") == "0"


# --- the network: the cluster's servers are reachable only from inside it ------------------

# ps and worker: a real TensorFlow gRPC server (it listens on every interface). The chief
# waits for the test to have probed the servers, then proves that it, inside, reaches them.
SERVER_PROBE_SCRIPT = textwrap.dedent(
    """
    import json, os, socket, sys, time
    import tensorflow as tf

    cfg = json.loads(os.environ["TF_CONFIG"])
    task = cfg["task"]
    if task["type"] != "chief":
        tf.distribute.Server(
            tf.train.ClusterSpec(cfg["cluster"]), job_name=task["type"],
            task_index=task["index"], protocol="grpc", start=True,
        )
        print("serving", flush=True)
        time.sleep(300)
    deadline = time.monotonic() + 40
    while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    host, port = cfg["cluster"]["ps"][0].rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=5).close()
    print("chief reached ps:0", flush=True)
    """
)


def non_loopback_ipv4() -> str | None:
    """This machine's address on an interface other than lo that is up, or None."""
    import fcntl
    import socket
    import struct

    from tfpipes.cluster.private_network import up_interfaces

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in up_interfaces():
            try:
                req = struct.pack("256s", name.encode()[:15])
                return socket.inet_ntoa(fcntl.ioctl(s, 0x8915, req)[20:24])  # SIOCGIFADDR
            except OSError:
                continue
    return None


def reachable(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.cluster
@pytest.mark.timeout(90)
@pytest.mark.parametrize("allow_network", [False, True])
def test_servers_are_reachable_only_from_inside_the_cluster(tmp_path, allow_network):
    """A ps server started by local-cluster is not reachable from this machine's own network
    (neither its non-loopback address nor 127.0.0.1) while the chief reaches it; with
    allow_network it is reachable from outside, which shows the probe would see exposure."""
    script = tmp_path / "probe.py"
    script.write_text(SERVER_PROBE_SCRIPT)
    probed = tmp_path / "probed"
    outside = non_loopback_ipv4()
    seen: dict[str, bool] = {}
    ports: dict[str, int] = {}

    def on_line(line: str) -> None:
        m = re.fullmatch(r"\[local-cluster\] started (\S+) \(pid \d+\) at 127\.0\.0\.1:(\d+)", line)
        if m:
            ports[m.group(1)] = int(m.group(2))
        if line == "[ps:0] serving":
            for host in filter(None, ("127.0.0.1", outside)):
                seen[host] = reachable(host, ports["ps:0"])
            probed.touch()

    out = Capture(on_line)
    result = run_cluster(
        lambda t, i: [PY, str(script), str(probed)],
        workers=1,
        ps=1,
        chief=True,
        timeout=70,
        grace=1.0,
        out=out,
        allow_network=allow_network,
    )
    assert result.exit_code == 0, out
    assert "chief reached ps:0" in out.of("chief:0"), out
    if allow_network:
        assert "[local-cluster] network: this machine's" in str(out)
        assert seen and all(seen.values()), (seen, str(out))
    else:
        assert "[local-cluster] network: a private namespace with only loopback" in out.lines
        assert seen and not any(seen.values()), (seen, str(out))


@pytest.mark.cluster
@pytest.mark.timeout(30)
def test_tasks_see_only_loopback_and_reach_a_loopback_storage_emulator(monkeypatch):
    """Inside the namespace: no interface but lo; a STORAGE_EMULATOR_HOST on the host's
    127.0.0.1 (fake GCS in the tests) still answers, through the launcher's relay."""
    import http.server

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello from the host"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        script = (
            "import os, urllib.request\n"
            "names = [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]]\n"
            "print('interfaces', names)\n"
            "print(urllib.request.urlopen(os.environ['STORAGE_EMULATOR_HOST']).read().decode())"
        )
        out = Capture()
        result = run_cluster(lambda t, i: [PY, "-c", script], workers=2, timeout=20, out=out)
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 0, out
    for task in ("worker:0", "worker:1"):
        assert out.of(task) == ["interfaces ['lo']", "hello from the host"], out


@pytest.mark.cluster
@pytest.mark.timeout(30)
def test_without_root_it_refuses_to_expose_the_servers(tmp_path):
    """Unprivileged (as root, the test drops to uid 1000) no namespace can be made: with
    another interface up, local-cluster refuses (exit 2, one line) unless --allow-network;
    with none up there is nothing to expose, and it runs."""
    from tfpipes.cluster.private_network import up_interfaces

    drop = ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups"]
    drop = drop if os.getuid() == 0 else []

    # The launcher needs nothing beyond the standard library; a venv's python may link into
    # a home directory uid 1000 cannot enter, so take the first interpreter that uid 1000 can
    # start, and that can start itself (as the launcher starts the tasks).
    def usable(c: str) -> bool:
        inner = "import sys; sys.exit(sys.version_info < (3, 10))"
        check = (
            f"import subprocess, sys; sys.exit(subprocess.run([{c!r}, '-c', {inner!r}]).returncode)"
        )
        return subprocess.run([*drop, c, "-c", check], capture_output=True).returncode == 0

    py = next((c for c in (PY, "/usr/bin/python3") if usable(c)), None)
    assert py, "no Python 3.10+ that uid 1000 can run"
    runs = {}
    for extra in ((), ("--allow-network",)):
        runs[extra] = subprocess.run(
            [*drop, py, "-m", "tfpipes.cli", "local-cluster", *extra, "--workers", "1",
             "--full-command", "--", py, "-c", "print('ran')"],
            cwd="/",
            env=dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path)),
            capture_output=True,
            text=True,
            timeout=25,
        )  # fmt: skip
    allowed = runs[("--allow-network",)]
    assert allowed.returncode == 0, allowed
    assert "[worker:0] ran" in allowed.stdout
    plain = runs[()]
    if not up_interfaces():
        assert plain.returncode == 0, plain
        assert "network: this machine's, which has no interface but lo up" in plain.stdout
        return
    assert plain.returncode == 2, plain
    assert "ran" not in plain.stdout and "Traceback" not in plain.stderr
    (line,) = plain.stderr.strip().splitlines()
    assert "cannot make a private network namespace" in line and "--allow-network" in line
