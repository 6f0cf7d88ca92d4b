"""Before a task trains: find its peers, bound every wait, and check the data fits the cluster.

A pod's peers are often not there yet when it starts: their DNS names do not resolve until the
operator has created the pods and services, and their gRPC servers listen only once their
process got that far. TensorFlow's own waits are silent and, for a peer that never comes,
endless (MultiWorkerMirroredStrategy blocks in its constructor; the ParameterServerStrategy
coordinator blocks after "connecting to cluster"). So every wait here has a deadline, passed
in by the caller (:func:`peer_timeout` reads ``TFPIPES_PEER_TIMEOUT``, default 300, once at
the entry point), and ends in a :class:`RetryableError` that names the task:
``worker:1 at host:port unreachable after 30 s (connection refused)``.

- :func:`wait_for_peers`: retries with exponential backoff, resolving DNS on every try. Under
  ParameterServerStrategy the chief waits until every worker and ps accepts TCP connections
  (they serve from the start). Under MultiWorkerMirroredStrategy nobody listens before the
  strategy is created, so a task waits for its peers' names to resolve and, unless it leads
  the coordination service, for the leader (the chief, else worker 0) to listen.
- :func:`rendezvous`: the above, then TensorFlow's own registration bounded by what is left of
  the deadline (the coordination-service settings, which have no public API in TF 2.21), with
  its timeout turned into the same kind of message.
- :func:`check_shards`: FILE auto-sharding gives each input pipeline whole files; fewer files
  than pipelines fails inside tf.data, so the trainer checks first and says what it needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator

from tfpipes.errors import RetryableError, UserError, first_line
from tfpipes.strategy import Resolution

log = logging.getLogger("tfpipes.peers")

ENV_TIMEOUT = "TFPIPES_PEER_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
CONNECT_TIMEOUT = 2.0
TASK_ORDER = ("chief", "worker", "ps", "evaluator")


@dataclasses.dataclass(frozen=True)
class Peer:
    """Another task of the cluster: ``worker:1`` at ``host:port``."""

    task_type: str
    index: int
    host: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.task_type}:{self.index}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def peer_timeout() -> float:
    """Seconds a task waits for its peers: ``$TFPIPES_PEER_TIMEOUT``, default 300."""
    text = os.environ.get(ENV_TIMEOUT, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{ENV_TIMEOUT}={text!r}: expected a positive number of seconds")
    return value


def cluster_peers(res: Resolution) -> list[Peer]:
    """Every task in ``res.cluster`` but this one, chief first, then workers, then ps."""
    out = []
    for task_type in sorted(res.cluster, key=lambda t: (TASK_ORDER + (t,)).index(t)):
        for index, address in enumerate(res.cluster[task_type]):
            if (task_type, index) == (res.task_type, res.task_index):
                continue
            host, sep, port = str(address).rpartition(":")
            if not sep or not port.isdigit():
                raise UserError(
                    f"TF_CONFIG: {task_type}:{index} address {address!r} is not host:port"
                )
            out.append(Peer(task_type, index, host.strip("[]"), int(port)))
    return out


def coordination_leader(res: Resolution) -> tuple[str, int]:
    """The task that leads MultiWorkerMirroredStrategy's coordination service (as TF picks it)."""
    return ("chief", 0) if res.cluster.get("chief") else ("worker", 0)


def probe(peer: Peer, connect: bool = True, resolve: Callable = socket.getaddrinfo) -> str | None:
    """None if ``peer``'s name resolves (and, with ``connect``, it accepts a TCP connection);
    otherwise why not, in a few words."""
    try:
        infos = resolve(peer.host, peer.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        return f"name does not resolve: {getattr(e, 'strerror', None) or e}"
    if not connect:
        return None
    reason = "no address"
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(CONNECT_TIMEOUT)
                s.connect(sockaddr)
            return None
        except TimeoutError:
            reason = "connection timed out"
        except OSError as e:
            reason = (e.strerror or str(e)).lower()
    return reason


def gone_within(
    candidates: list[Peer],
    window: float,
    *,
    every: float = 0.25,
    probe_fn: Callable[..., str | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Peer]:
    """The ``candidates`` that refuse a connection, probing every ``every`` seconds for up to
    ``window`` seconds and stopping after the first round in which any refused.

    One probe right after a failure proves little: the connection TensorFlow saw reset can be
    closed before the dead task's listening socket is, so for a moment the task still seems
    to accept connections. An empty list means every candidate answered throughout."""
    probe_fn = probe_fn or probe
    end = clock() + window
    while True:
        gone = [p for p in candidates if probe_fn(p) is not None]
        now = clock()
        if gone or now >= end:
            return gone
        sleep(min(every, end - now))


def wait_for(
    peers: list[Peer],
    deadline: float,
    timeout: float,
    *,
    connect: Callable[[Peer], bool] = lambda p: True,
    probe_fn: Callable[..., str | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Retry ``probe_fn`` on the peers not ready yet, backing off from 0.1 s up to 5 s, until
    all are ready or ``deadline`` (a ``clock()`` value) passes; then raise RetryableError naming
    every peer still unreachable. ``connect(peer)``: whether a TCP connection is required
    (else a resolving name is enough). ``timeout`` is only for the message."""
    probe_fn = probe_fn or probe
    pending = list(peers)
    backoff = FIRST_BACKOFF
    reasons: dict[Peer, str] = {}
    tries = 0
    while True:
        tries += 1
        for peer in list(pending):
            why = probe_fn(peer, connect=connect(peer))
            if why is None:
                pending.remove(peer)
                if tries > 1:
                    log.info("peer %s at %s is up", peer.name, peer.address)
            else:
                reasons[peer] = why
        if not pending:
            return
        now = clock()
        if now >= deadline:
            raise RetryableError(
                "; ".join(
                    f"{p.name} at {p.address} unreachable after {timeout:g} s ({reasons[p]})"
                    for p in pending
                )
                + f" [--peer-timeout or {ENV_TIMEOUT} sets the wait]"
            )
        if tries == 1:
            log.info(
                "waiting up to %.0f s for %s",
                deadline - now,
                ", ".join(f"{p.name} at {p.address} ({reasons[p]})" for p in pending),
            )
        sleep(min(backoff, max(deadline - now, 0.0)))
        backoff = min(backoff * 2, MAX_BACKOFF)


def wait_for_peers(res: Resolution, timeout: float, deadline: float | None = None):
    """Wait until the peers this task needs are there; RetryableError naming the missing ones.

    parameter_server: the chief needs every worker and ps to accept TCP; workers and ps wait
    for nobody. multi_worker: every peer's name must resolve, and the coordination-service
    leader must accept TCP unless this task is the leader. Other kinds: returns at once.
    ``timeout``: seconds (the caller's, e.g. :func:`peer_timeout` read once at the entry
    point); ``deadline``: a ``time.monotonic()`` value that overrides it.
    """
    if res.kind not in ("multi_worker", "parameter_server"):
        return
    deadline = time.monotonic() + timeout if deadline is None else deadline
    peers = cluster_peers(res)
    if res.kind == "parameter_server":
        if res.task_type != "chief":
            return
        peers = [p for p in peers if p.task_type in ("worker", "ps")]
        wait_for(peers, deadline, timeout)
        return
    leader = coordination_leader(res)
    peers = [p for p in peers if p.task_type in ("chief", "worker")]
    wait_for(peers, deadline, timeout, connect=lambda p: (p.task_type, p.index) == leader)


@contextlib.contextmanager
def rendezvous(res: Resolution, timeout: float) -> Iterator[None]:
    """Wrap the creation of a MultiWorkerMirroredStrategy so that it cannot hang.

    ``with peers.rendezvous(res, timeout): strategy = create_strategy(res)``: waits as
    :func:`wait_for_peers`, then bounds TensorFlow's cluster registration by the time left
    (every task, the leader included, gives up together) and turns its timeout into a
    RetryableError naming the tasks that never joined. Other kinds: just
    :func:`wait_for_peers`. ``timeout``: seconds for the whole rendezvous.
    """
    deadline = time.monotonic() + timeout
    wait_for_peers(res, timeout, deadline)
    if res.kind != "multi_worker" or res.task_type not in ("chief", "worker"):
        yield
        return
    import tensorflow as tf

    # At least a few seconds: the registration itself takes a moment once all are there.
    _bound_registration(res, max(deadline - time.monotonic(), 5.0))
    try:
        yield
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as e:
        raise RetryableError(_registration_failure(res, e, timeout)) from None


def _bound_registration(res: Resolution, seconds: float) -> None:
    """Configure the coordination service as MWMS would, plus a registration deadline."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(res.cluster[job]))
        for job in ("chief", "worker")
        if res.cluster.get(job)
    ]
    leader_type, leader_index = coordination_leader(res)
    ctx = context.context()
    ctx.configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{leader_type}/replica:0/task:{leader_index}",
        coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=int(seconds * 1000),
    )
    # Without the barrier only the joining tasks time out; the leader would wait forever.
    ctx.coordination_service.cluster_register_with_barrier = True


TF_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


def _registration_failure(res: Resolution, error: Exception, timeout: float) -> str:
    text = getattr(error, "message", None) or str(error)
    first = first_line(error)
    by_name = {p.name: p for p in cluster_peers(res)}
    # The leader's error lists the tasks that never registered.
    _, _, tail = text.partition("timed out task names:")
    names = [f"{t}:{i}" for t, i in TF_TASK.findall(tail.split("\n\n")[0])]
    missing = [by_name[n] for n in names if n in by_name]
    if not missing:  # a joining task only hears "Deadline Exceeded": ask the peers themselves
        missing = [p for p in by_name.values() if probe(p) is not None]
    if not missing:
        leader = "{}:{}".format(*coordination_leader(res))
        missing = [by_name[leader]] if leader in by_name else []
    who = ", ".join(f"{p.name} at {p.address}" for p in missing) or "a peer"
    return (
        f"{who} unreachable after {timeout:g} s: never joined the cluster "
        f"({type(error).__name__}: {first}) [--peer-timeout or {ENV_TIMEOUT} sets the wait]"
    )


def check_shards(data: str, num_pipelines: int, split: str = "train") -> None:
    """UserError unless each of ``num_pipelines`` input pipelines (one per worker) can read
    whole files of the ``split`` of data set ``data``: FILE sharding needs at least as many
    shard files as pipelines. Reads only the manifest, so it runs before any wait."""
    if num_pipelines <= 1:
        return
    from tfpipes.manifest import read_manifest

    num_shards = len(read_manifest(data).shard_paths(split))
    if num_shards < num_pipelines:
        raise UserError(
            f"{data}: the {split} split has {num_shards} shard file(s) but {num_pipelines} "
            f"workers each need at least one; preprocess again with --num-shards "
            f"{num_pipelines} or more (a multiple of {num_pipelines} balances them)"
        )
