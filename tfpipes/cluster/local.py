"""Run a multi-process TensorFlow cluster on 127.0.0.1, as the Kubeflow Training Operator would.

:func:`run_cluster` starts one process per task (chief, workers, parameter servers), each with a
``TF_CONFIG`` of exactly the shape the operator sets in a TFJob pod, streams their output with a
``[worker:0]`` prefix, and returns as soon as the job is decided:

- success: every *finishing* task exited 0. In PS mode (``ps > 0``) that is the chief alone,
  because workers and parameter servers serve forever; otherwise the chief (if any) and all
  workers, since under MultiWorkerMirroredStrategy every worker trains to the end.
- failure: any task exited non-zero or was killed by a signal; the rest are stopped at once.
  A peer that never comes up makes MWMS wait forever, so the launcher must not wait for them.
- timeout: the whole run took longer than ``timeout`` seconds.

Every process runs in its own process group; whatever happens (return, exception,
KeyboardInterrupt, SIGTERM of the launcher, interpreter exit) each group gets SIGTERM, then
SIGKILL after ``grace`` seconds, and is reaped before :func:`run_cluster` returns. On Linux the
children also die with SIGKILL if the launcher itself is SIGKILLed (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from tfpipes.cluster.private_network import (
    NetworkIsolationError,
    PrivateNetwork,
    loopback_relay_targets,
    open_private_network,
    up_interfaces,
)
from tfpipes.errors import EXIT_TIMEOUT
from tfpipes.tf_log import QUIET_TF_LOG_LEVEL, TF_LOG_ENV, hidden_notice

TASK_TYPES = ("chief", "worker", "ps")
LAUNCHER = "local-cluster"
HOST_NETWORK_NOTE = (
    "this machine's (--allow-network): the TensorFlow servers accept connections from other "
    "machines"
)


@dataclass(frozen=True)
class Task:
    """One process of the cluster: its ``TF_CONFIG`` task type and index."""

    type: str
    index: int

    @property
    def name(self) -> str:
        return f"{self.type}:{self.index}"


@dataclass(frozen=True)
class ClusterResult:
    """How the run ended.

    ``exit_code`` is 0 on success, the failed task's exit code (128 + N when it was killed by
    signal N) on failure, and :data:`EXIT_TIMEOUT` on timeout. ``failed_task`` names the first
    task that failed (``None`` otherwise); ``message`` is a one-line summary; ``pids`` maps
    every task name to the pid it had, all of them reaped by the time this is returned.
    """

    exit_code: int
    message: str
    failed_task: str | None = None
    pids: dict[str, int] = field(default_factory=dict)


def cluster_tasks(workers: int, ps: int = 0, chief: bool = False) -> list[Task]:
    """The tasks of a cluster, in the order they are started (servers first)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if ps < 0:
        raise ValueError(f"ps must be >= 0, got {ps}")
    if ps > 0 and not chief:
        raise ValueError("a cluster with parameter servers needs a chief (the coordinator)")
    tasks = [Task("ps", i) for i in range(ps)]
    tasks += [Task("worker", i) for i in range(workers)]
    if chief:
        tasks.append(Task("chief", 0))
    return tasks


def cluster_spec(addresses: Mapping[Task, str]) -> dict[str, list[str]]:
    """``{"chief": [...], "worker": [...], "ps": [...]}`` with only the task types present."""
    spec: dict[str, list[str]] = {}
    for task_type in TASK_TYPES:
        members = sorted((t.index, a) for t, a in addresses.items() if t.type == task_type)
        if members:
            spec[task_type] = [a for _, a in members]
    return spec


def tf_config(cluster: Mapping[str, list[str]], task: Task) -> str:
    """The ``TF_CONFIG`` value the Training Operator gives ``task`` (JSON text)."""
    return json.dumps(
        {
            "cluster": dict(cluster),
            "task": {"type": task.type, "index": task.index},
            "environment": "cloud",
        }
    )


def reserve_ports(count: int, host: str = "127.0.0.1") -> list[socket.socket]:
    """Bind ``count`` sockets to free ports on ``host``; close them just before use.

    Holding them until the processes are spawned keeps two tasks from getting the same port.
    They are bound but never listen, so closing them leaves no TIME_WAIT behind.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return sockets


def default_train_argv(train_args: Sequence[str]) -> Callable[[str, int], list[str]]:
    """``argv_for_task`` that runs ``tfpipes train <train_args>`` in every task."""
    argv = [sys.executable, "-m", "tfpipes.cli", "train", *train_args]
    return lambda task_type, index: list(argv)


def describe_exit(returncode: int) -> tuple[str, int]:
    """``("exited with code 3", 3)`` or ``("was killed by signal 9 (SIGKILL)", 137)``."""
    if returncode < 0:
        sig = -returncode
        try:
            sig_name = signal.Signals(sig).name
        except ValueError:
            sig_name = f"signal {sig}"
        return f"was killed by signal {sig} ({sig_name})", 128 + sig
    return f"exited with code {returncode}", returncode


# Every process group started and not yet reaped, for the atexit safety net.
_LIVE: dict[int, subprocess.Popen] = {}
_LIVE_LOCK = threading.Lock()


def _kill_live_groups() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
    for proc in procs:
        _signal_group(proc, signal.SIGKILL)


atexit.register(_kill_live_groups)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    # The group id is the leader's pid (start_new_session). Signalling the group after the
    # leader was reaped is still right: the kernel does not reuse a pid that names a live group.
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent_fn() -> Callable[[], None] | None:
    """A preexec_fn that asks Linux to SIGKILL the child when the launcher dies, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(EXIT_TIMEOUT)

    return preexec


class LauncherTerminated(Exception):
    """The launcher itself got SIGTERM or SIGHUP; raised after every task was stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


class _Printer:
    """Writes whole lines from several threads to one stream, each with its prefix. A task's
    TensorFlow C++ notices that its ``TF_CPP_MIN_LOG_LEVEL`` (``tf_level``) hides are dropped:
    TensorFlow prints some while it loads, before it applies the level
    (:func:`tfpipes.tf_log.quiet_tensorflow_import`; a task's script may import TensorFlow
    without tfpipes)."""

    def __init__(self, out: TextIO, tf_level: str | None = None) -> None:
        self._out: TextIO | None = out
        self._lock = threading.Lock()
        self._tf_level = tf_level

    def line(self, prefix: str, text: str) -> None:
        with self._lock:
            if self._out is None:
                return
            try:
                self._out.write(f"[{prefix}] {text}\n")
                self._out.flush()
            except (OSError, ValueError):
                # The reader went away (`| head`): keep draining the pipes so that no task
                # blocks on a full one, and drop the lines.
                self._out = None

    def pump(self, prefix: str, pipe) -> None:
        with pipe:
            for raw in iter(pipe.readline, b""):
                if hidden_notice(raw, self._tf_level):
                    continue
                self.line(prefix, raw.decode("utf-8", errors="replace").rstrip("\r\n"))


def run_cluster(
    argv_for_task: Callable[[str, int], Sequence[str]],
    workers: int,
    ps: int = 0,
    chief: bool = False,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    grace: float = 5.0,
    out: TextIO | None = None,
    cwd: str | os.PathLike | None = None,
    allow_network: bool = False,
) -> ClusterResult:
    """Run the cluster until it succeeds, a task fails, or ``timeout`` seconds pass.

    ``argv_for_task(task_type, index)`` gives each task's command line; each runs with the
    launcher's environment plus ``env``, ``TF_CONFIG`` and ``PYTHONUNBUFFERED=1``, its stdout and
    stderr merged and written to ``out`` (default ``sys.stdout``) line by line as
    ``[worker:0] ...``. Launcher notes go there too as ``[local-cluster] ...``.
    ``TF_CPP_MIN_LOG_LEVEL`` is the launcher's (or ``env``'s), 2 when neither sets it: the tasks'
    TensorFlow C++ notices stay quiet unless asked for.

    Network: TensorFlow's servers listen on every interface, unauthenticated, so the tasks run
    in a private network namespace with only loopback (:mod:`tfpipes.cluster.private_network`;
    a loopback ``STORAGE_EMULATOR_HOST`` is relayed into it). Where no namespace can be made (not
    root), they run in this machine's network only if no interface but ``lo`` is up, or
    ``allow_network``; otherwise :class:`NetworkIsolationError` (a UserError) is raised before
    anything starts. ``allow_network`` runs them in this machine's network in any case (to reach
    gs://), where other machines can reach their servers.

    Returns a :class:`ClusterResult`; never leaves a process behind (see the module docstring).
    Raises ``ValueError`` on an impossible shape and ``OSError`` if a command cannot be started;
    ``KeyboardInterrupt`` and :class:`LauncherTerminated` (SIGTERM/SIGHUP of the launcher, when
    called from the main thread) propagate after the cleanup.
    """
    tasks = cluster_tasks(workers, ps, chief)
    out = sys.stdout if out is None else out
    deadline = None if timeout is None else time.monotonic() + timeout
    ps_mode = ps > 0
    finishing = {t for t in tasks if t.type == "chief" or (t.type == "worker" and not ps_mode)}

    base_env = dict(os.environ)
    base_env.update(env or {})
    base_env["PYTHONUNBUFFERED"] = "1"
    base_env.setdefault(TF_LOG_ENV, QUIET_TF_LOG_LEVEL)
    printer = _Printer(out, base_env[TF_LOG_ENV])
    network, sockets, where = _open_network(len(tasks), base_env, allow_network)
    addresses = {t: f"127.0.0.1:{s.getsockname()[1]}" for t, s in zip(tasks, sockets)}
    cluster = cluster_spec(addresses)

    procs: dict[Task, subprocess.Popen] = {}
    exited: queue.Queue[tuple[Task, int]] = queue.Queue()
    threads: list[threading.Thread] = []
    previous_handlers = _install_signal_handlers()
    try:
        argvs = {t: list(argv_for_task(t.type, t.index)) for t in tasks}
        for s in sockets:
            s.close()
        preexec = _die_with_parent_fn()
        if network is not None:
            preexec = _chain(network.preexec, preexec)
        # Spawn everything before starting threads: preexec_fn runs between fork and exec,
        # where another thread holding a lock could deadlock the child.
        for task in tasks:
            task_env = dict(base_env, TF_CONFIG=tf_config(cluster, task))
            proc = subprocess.Popen(
                argvs[task],
                env=task_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,  # noqa: PLW1509 (spawned before our threads start)
            )
            with _LIVE_LOCK:
                _LIVE[proc.pid] = proc
            procs[task] = proc
        if network is not None:
            network.start_relays()
        printer.line(LAUNCHER, f"network: {where}")
        for task, proc in procs.items():
            printer.line(LAUNCHER, f"started {task.name} (pid {proc.pid}) at {addresses[task]}")
            threads.append(_start(printer.pump, task.name, proc.stdout))
            threads.append(_start(lambda t=task, p=proc: exited.put((t, p.wait()))))
        return _supervise(tasks, procs, finishing, exited, deadline, printer, timeout)
    finally:
        for s in sockets:
            s.close()
        _stop_all(procs, grace, printer)
        if network is not None:
            network.close()
        _restore_signal_handlers(previous_handlers)
        for thread in threads:
            # A grandchild that escaped its group could hold the pipe open: do not wait forever.
            thread.join(timeout=1.0)


def _open_network(
    count: int, env: Mapping[str, str], allow_network: bool
) -> tuple[PrivateNetwork | None, list[socket.socket], str]:
    """The namespace the tasks run in (None: this machine's), ``count`` reserved ports in it,
    and a few words saying which, for the launcher's log (see :func:`run_cluster`)."""
    if allow_network:
        return None, reserve_ports(count), HOST_NETWORK_NOTE
    try:
        network, sockets = open_private_network(
            lambda: reserve_ports(count), loopback_relay_targets(dict(env))
        )
    except NetworkIsolationError as e:
        others = up_interfaces()
        if others:
            raise NetworkIsolationError(
                f"{e}, and {', '.join(others)} is up: the TensorFlow servers would be reachable "
                "from other machines; run as root, or pass --allow-network to accept that"
            ) from None
        return None, reserve_ports(count), "this machine's, which has no interface but lo up"
    return network, sockets, "a private namespace with only loopback"


def _chain(*fns: Callable[[], None] | None) -> Callable[[], None]:
    steps = [f for f in fns if f is not None]

    def run() -> None:
        for f in steps:
            f()

    return run


def _start(target: Callable, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def _supervise(
    tasks: list[Task],
    procs: dict[Task, subprocess.Popen],
    finishing: set[Task],
    exited: queue.Queue,
    deadline: float | None,
    printer: _Printer,
    timeout: float | None,
) -> ClusterResult:
    pids = {t.name: p.pid for t, p in procs.items()}
    pending = set(finishing)
    while pending:
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            running = ", ".join(t.name for t in tasks if procs[t].poll() is None)
            message = f"timed out after {timeout:g} s; still running: {running or 'none'}"
            printer.line(LAUNCHER, message)
            return ClusterResult(EXIT_TIMEOUT, message, None, pids)
        try:
            # Short waits keep the main thread responsive to signals.
            task, returncode = exited.get(timeout=0.5 if wait is None else min(wait, 0.5))
        except queue.Empty:
            continue
        how, code = describe_exit(returncode)
        if returncode != 0:
            message = f"{task.name} {how}"
            printer.line(LAUNCHER, f"{message}; stopping the other tasks")
            return ClusterResult(code, message, task.name, pids)
        if task in pending:
            pending.discard(task)
            printer.line(LAUNCHER, f"{task.name} finished")
        else:
            printer.line(LAUNCHER, f"{task.name} {how} before the job finished")
    return ClusterResult(0, "all tasks finished", None, pids)


def _stop_all(procs: dict[Task, subprocess.Popen], grace: float, printer: _Printer) -> None:
    """SIGTERM every group, SIGKILL after ``grace`` seconds, reap everything."""
    for proc in procs.values():
        _signal_group(proc, signal.SIGTERM)
    stop_at = time.monotonic() + grace
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.0, stop_at - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for task, proc in procs.items():
        # SIGKILL the group even when the leader is gone: a grandchild may have outlived it.
        _signal_group(proc, signal.SIGKILL)
        if proc.poll() is None:
            printer.line(LAUNCHER, f"{task.name} ignored SIGTERM for {grace:g} s; killed")
        proc.wait()
        with _LIVE_LOCK:
            _LIVE.pop(proc.pid, None)


def _raise_terminated(signum: int, frame) -> None:
    # Ignore repeats until the cleanup is done; run_cluster restores the old handlers.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise LauncherTerminated(signum)


def _install_signal_handlers() -> dict[int, object]:
    """Turn SIGTERM/SIGHUP into an exception so the finally-cleanup runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, _raise_terminated)
    return previous


def _restore_signal_handlers(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
