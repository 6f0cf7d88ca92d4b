"""A private network namespace for the local cluster's processes: loopback only.

TensorFlow binds its gRPC servers on every interface (``[::]:port``) with no authentication,
whatever address ``TF_CONFIG`` names. Started in a network namespace of their own, whose only
interface is ``lo``, the servers are reachable from the processes of the cluster and from
nothing else, on this machine or another; the tasks still reach each other at 127.0.0.1.

Making a network namespace needs ``CAP_SYS_ADMIN`` (root). Without it,
:func:`open_private_network` raises :class:`NetworkIsolationError` and the caller decides
(``local-cluster`` refuses to run when another interface is up, unless ``--allow-network``).

A local storage emulator (``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT``, the fake GCS the
tests and developers use) lives on the host's loopback, which the namespace cannot see: a relay
listens at the same address inside the namespace and forwards each connection to the host's
127.0.0.1 port, outward only.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from tfpipes.errors import UserError

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


class NetworkIsolationError(UserError):
    """A private network namespace cannot be made here (no CAP_SYS_ADMIN, no namespaces)."""


def up_interfaces() -> list[str]:
    """Names of the network interfaces other than ``lo`` that are up, in the calling thread's
    namespace (``/proc/thread-self/net``; ``/sys/class/net`` shows the namespace sysfs was
    mounted in instead)."""
    try:
        with open("/proc/thread-self/net/dev") as f:
            names = [line.split(":", 1)[0].strip() for line in f.readlines()[2:]]
    except OSError:
        return []
    up = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            if name == "lo":
                continue
            try:
                req = struct.pack("16sH14x", name.encode()[:15], 0)
                flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
            except OSError:
                continue
            if flags & _IFF_UP:
                up.append(name)
    return sorted(up)


def loopback_relay_targets(env: dict[str, str]) -> list[int]:
    """Host loopback ports the tasks must still reach: a local ``STORAGE_EMULATOR_HOST``."""
    url = env.get("STORAGE_EMULATOR_HOST", "")
    if not url:
        return []
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.hostname not in LOOPBACK_HOSTS:
        return []
    return [parts.port or (443 if parts.scheme == "https" else 80)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, setns=None) -> None:
    if (setns or _libc().setns)(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _bring_loopback_up() -> None:
    # The socket belongs to the calling thread's namespace, so the ioctl sets that lo up.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


class PrivateNetwork:
    """An open network namespace with ``lo`` up, and the relays into it.

    :meth:`preexec` moves a child into it between fork and exec; :meth:`start_relays` serves
    the relays; :meth:`close` stops them and drops this process's hold on the namespace (it
    lives on while a process of the cluster is still in it).
    """

    def __init__(
        self, ns_fd: int, make_sockets: Callable[[], list[tuple[socket.socket, int]]]
    ) -> None:
        self.ns_fd = ns_fd
        # Resolved here: the child between fork and exec should not have to dlopen anything.
        self._setns_fn = _libc().setns
        self._listeners = make_sockets()
        self._closed = threading.Event()

    def preexec(self) -> None:
        """Enter the namespace; for ``subprocess.Popen(preexec_fn=...)`` (the fd is still open
        there: ``close_fds`` runs after it)."""
        _setns(self.ns_fd, self._setns_fn)

    def start_relays(self) -> None:
        """Serve the relays (after the processes are spawned: no thread runs at fork time).
        Connections made before this wait in the listeners' backlog."""
        for listener, port in self._listeners:
            threading.Thread(target=self._accept, args=(listener, port), daemon=True).start()

    def _accept(self, listener: socket.socket, port: int) -> None:
        while not self._closed.is_set():
            try:
                inner, _ = listener.accept()
            except OSError:
                return
            try:
                # Made by this thread, which is in the launcher's namespace: the host's lo.
                outer = socket.create_connection(("127.0.0.1", port), timeout=30)
            except OSError:
                inner.close()
                continue
            outer.settimeout(None)
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        for s, _ in self._listeners:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept(), which close() does not
            except OSError:
                pass
            s.close()
        try:
            os.close(self.ns_fd)
        except OSError:
            pass


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        src.close()


def open_private_network(
    reserve: Callable[[], list[socket.socket]], relay_ports: Iterable[int] = ()
) -> tuple[PrivateNetwork, list[socket.socket]]:
    """Make a namespace with only ``lo`` (up); returns it and ``reserve()``'s sockets, made in it.

    The calling thread enters the new namespace only while the namespace's own sockets are
    made (``reserve()`` and one relay listener per port of ``relay_ports``), then returns to
    its own; nothing else of this process changes namespace. Raises
    :class:`NetworkIsolationError` when namespaces cannot be made here.
    """
    relay_ports = list(relay_ports)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc().unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            why = "needs root (CAP_SYS_ADMIN)" if err in (errno.EPERM, errno.EACCES) else ""
            raise NetworkIsolationError(
                f"cannot make a private network namespace: {os.strerror(err)}"
                + (f"; it {why}" if why else "")
            )
        try:
            _bring_loopback_up()
            ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            reserved: list[socket.socket] = []

            def make_sockets() -> list[tuple[socket.socket, int]]:
                # The relays' fixed ports first, so that no reserved port can take one.
                listeners = []
                for port in relay_ports:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", port))
                    s.listen(64)
                    listeners.append((s, port))
                reserved.extend(reserve())
                return listeners

            network = PrivateNetwork(ns_fd, make_sockets)
        finally:
            # Back to the launcher's namespace, whatever happened above.
            _setns(home)
    finally:
        os.close(home)
    return network, reserved
