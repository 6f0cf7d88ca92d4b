"""One input pipeline's shards of a remote data set, fetched ahead into a local directory.

The protocol between a :class:`ShardCache` and the tf.data reader (``stream.read_shard``,
graph ops only, so that it runs on a parameter-server worker too):

- before it waits for shard ``N``, the reader reads the cache's ticket (``token``) and writes
  an empty *want* file ``.want-<token>-<N>``; the cache removes it and knows where
  the reader is, whatever it fetched before (a pipeline built again from its first shard, by a
  restarted chief, is served like the first one);
- the cache answers with the shard itself, renamed into place whole once its CRC32C matched, or,
  if the download failed for good, with ``.error-<token>-<N>`` (``user|`` or ``retryable|`` and
  one line), after it changed its ticket: an error answers the reads that asked before it,
  never a later one;
- the cache sees tf.data open and close each shard (inotify): a shard read to its end and
  closed leaves the cache when it is no longer among the next ones to read.

Which shards are on disk: the ones a reader waits for or has open, then the next ones of the
share in read order from the last one asked for (cyclic when ``repeat``), as many as fit in
``limit`` files, downloads in flight included. Nothing is skipped (a shard still open from one
epoch and wanted again in the next simply stays), nothing is fetched twice while it is there.

Everything in the cache's directory is the cache's own: it creates the directory (which must
not exist) and deletes only files it wrote there, and its readers' want files.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

from tfpipes import storage
from tfpipes.errors import RetryableError, TfpipesError, UserError, first_line

log = logging.getLogger("tfpipes.stream")

FETCHERS = 4  # shards fetched at once (each one request), within the limit
WANT, ANSWER = ".want-", ".error-"  # file name prefixes of the protocol above
STAMP = ".tfpipes-shard-cache"  # marks a directory a shard cache created
TICKET = ".ticket"  # a reader's token: changed before each error answer
CLOSE_WAIT_S = 10.0  # close() waits this long for the downloads it aborted to return

_IN_OPEN, _IN_CLOSE_WRITE, _IN_CLOSE_NOWRITE, _IN_Q_OVERFLOW = 0x20, 0x8, 0x10, 0x4000
_EVENT = struct.Struct("iIII")
_READ = 1 << 16  # bytes of events read at once


def local_name(rel: str) -> str:
    """The cache file name of the shard at ``rel`` (a manifest path)."""
    return rel.replace("/", "__")


class _Inotify:
    """Open, close and written-file events of the files in one directory (Linux inotify);
    :meth:`wake` ends a wait for them early (a self-pipe: a download finished)."""

    def __init__(self, directory: str):
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = _IN_OPEN | _IN_CLOSE_WRITE | _IN_CLOSE_NOWRITE
        if self._libc.inotify_add_watch(self.fd, os.fsencode(directory), mask) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        try:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            os.close(self.fd)
            raise

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:  # the pipe is full: a wake-up is pending anyway
            pass

    def events(self, timeout: float) -> list[tuple[int, str]]:
        """(mask, file name) of every event queued once one arrives, or the wait of
        ``timeout`` seconds ends (or a wake): all of those up to the moment the queue was
        read empty, none later."""
        ready, _, _ = select.select([self.fd, self._wake_r], [], [], timeout)
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        out: list[tuple[int, str]] = []
        while True:  # a read takes what is queued, up to the buffer: until one is not full
            try:
                buf = os.read(self.fd, _READ)
            except BlockingIOError:
                return out
            i = 0
            while i + _EVENT.size <= len(buf):
                _, mask, _, n = _EVENT.unpack_from(buf, i)
                if n:  # the watched directory's own events have no name
                    name = buf[i + _EVENT.size : i + _EVENT.size + n].rstrip(b"\0").decode()
                    out.append((mask, name))
                elif mask & _IN_Q_OVERFLOW:
                    out.append((mask, ""))
                i += _EVENT.size + n
            if len(buf) < _READ - _EVENT.size - 256:  # room was left: nothing more queued
                return out

    def close(self) -> None:
        for fd in (self.fd, self._wake_r, self._wake_w):
            os.close(fd)


class ShardCache:
    """One input pipeline's shards of the remote data set ``url``, fetched ahead into
    ``directory`` (created here; it must not exist).

    ``shards``: the manifest entries (``path``, ``crc32c``) in the order the pipeline reads
    them; ``repeat``: the pipeline reads them again each epoch. At most ``limit`` shard files
    are on disk at once (downloads in flight included); when the whole share fits, each shard
    is fetched once and kept. ``wait_s``: how long a reader waits for a shard before it gives
    up (a want older than that is no longer served). ``claim``: released by :meth:`close`.
    """

    def __init__(
        self, url, shards, directory: str, *, repeat: bool, limit: int, tag: str,
        wait_s: float = 60.0, claim=None,
    ):  # fmt: skip
        self.url, self.shards, self.directory = url, list(shards), directory
        self.repeat, self.limit, self.tag, self.wait_s = repeat, limit, tag, wait_s
        self.keep = len(self.shards) <= limit  # the whole share fits: fetch each shard once
        self.index = {local_name(s.path): i for i, s in enumerate(self.shards)}
        self.error: TfpipesError | None = None  # the cache itself failed (not one shard)
        self.fetched = 0
        self.split = "train"
        self._claim = claim
        self._lock = threading.Lock()  # file names put in place or removed, and ``_closed``
        self._closed = False
        self._stop, self._abort = threading.Event(), threading.Event()
        self._written: set[str] = set()  # names of files this cache wrote into ``directory``
        # the reader's side, seen by the cache thread only
        self._ready: set[str] = set()
        self._unread: set[str] = set()  # in ``_ready``, not opened since fetched
        self._inflight: dict[str, Future] = {}
        self._opens: collections.Counter = collections.Counter()
        self._wants: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._failed: dict[str, TfpipesError] = {}  # lasting failures no reader was told yet
        self._cursor = 0  # the share's index of the shard last asked for
        os.mkdir(directory, 0o700)
        try:
            self._put(STAMP, b"")
            self._put(TICKET, uuid.uuid4().hex.encode())
            self._watch = _Inotify(directory)
        except BaseException:
            self._remove_own()
            raise
        self._thread = threading.Thread(target=self._run, name=f"shard-cache-{tag}", daemon=True)
        self._thread.start()

    def paths(self) -> list[str]:
        return [os.path.join(self.directory, local_name(s.path)) for s in self.shards]

    # --- files ---------------------------------------------------------------------------

    def _put(self, name: str, data: bytes) -> None:
        """Write the file ``name`` whole (a temporary name, then renamed) unless closed."""
        tmp = f".{name}.part-{uuid.uuid4().hex[:8]}"
        with self._lock:
            if self._closed:
                return
            self._written.add(tmp)
        try:
            with open(os.path.join(self.directory, tmp), "wb") as f:
                f.write(data)
            self._rename(tmp, name)
        finally:
            self._unlink(tmp, own=False)  # its name is this call's own

    def _rename(self, tmp: str, name: str) -> bool:
        """Put the written file ``tmp`` in place as ``name``: False if the cache was closed."""
        with self._lock:
            if self._closed:
                return False
            os.rename(os.path.join(self.directory, tmp), os.path.join(self.directory, name))
            self._written.discard(tmp)
            self._written.add(name)
            return True

    def _unlink(self, name: str, own: bool = True) -> None:
        """Remove ``name`` if this cache wrote it (``own``: it is among ``_written``)."""
        with self._lock:
            if own and name not in self._written:
                return
            self._written.discard(name)
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass

    def _remove_own(self) -> None:
        with self._lock:
            self._closed = True
            names, self._written = sorted(self._written), set()
        try:  # and its readers' wants it did not see (written for it, by its protocol)
            names += [n for n in os.listdir(self.directory) if self._parse_name(n)]
        except FileNotFoundError:
            pass
        # the stamp last: a kill in between leaves a directory still marked as a cache's
        for name in sorted(names, key=lambda n: n == STAMP):
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.directory)
        except OSError as e:  # a file that is not ours: leave it, say so
            log.warning("%s: not removed: %s", self.directory, e.strerror)

    # --- the cache thread ----------------------------------------------------------------

    def _run(self) -> None:
        self._pool = ThreadPoolExecutor(FETCHERS, thread_name_prefix=f"fetch-{self.tag}")
        try:
            while not self._stop.is_set():
                reaped = self._reap()
                # Every event up to now, the readers' wants first: a reader writes its want
                # before it looks for the shard, so none that saw a file is missed below. A
                # download that ended (it wakes the wait) is planned after at once. One call,
                # which takes what is queued up to the moment it reads the queue empty:
                # reading "until no event is left" could last as long as anything kept
                # touching the directory, with no shard fetched meanwhile.
                for mask, name in self._watch.events(0.0 if reaped else 0.2):
                    self._event(mask, name)
                self._plan()
        except Exception as e:  # a reader must not wait for a thread that died: say why
            log.exception("the shard cache of %s failed", self.url)
            if isinstance(e, OSError):
                kind = RetryableError if e.errno == errno.ENOSPC else UserError
                self.error = kind(f"{self.directory}: cannot cache a shard: {e.strerror}")
            else:
                why = first_line(e)
                self.error = RetryableError(f"{self.url}: streaming a shard failed: {why}")
            self._answer_errors()
        finally:
            self._abort.set()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._watch.close()

    def _answer_errors(self) -> None:
        """After the cache failed: answer every read asked for (and every one still waiting)
        with its error, until closed."""
        try:
            for name, wants in self._wants.items():
                for token, _ in wants:
                    self._tell(name, token, self.error)
            while not self._stop.is_set():
                for mask, name in self._watch.events(0.2):
                    want = self._parse_want(mask, name)
                    if want is not None:
                        self._tell(want[0], want[1], self.error)
        except Exception:  # its readers then time out ("stopped answering")
            log.exception("the shard cache of %s cannot answer", self.url)

    def _parse_want(self, mask: int, name: str) -> tuple[str, str] | None:
        """(shard name, token) of a want file of this cache's shards (removed), else None."""
        want = self._parse_name(name) if mask & _IN_CLOSE_WRITE else None
        if want is not None:
            self._unlink(name, own=False)  # written by this cache's reader, for it alone
        return want

    def _parse_name(self, name: str) -> tuple[str, str] | None:
        if not name.startswith(WANT):
            return None
        token, _, shard = name[len(WANT) :].partition("-")
        return (shard, token) if shard in self.index and token.isalnum() else None

    def _event(self, mask: int, name: str) -> None:
        if mask & _IN_Q_OVERFLOW:
            log.warning("%s: inotify queue overflowed", self.directory)
        want = self._parse_want(mask, name)
        if want is not None:
            self._want(*want)
        elif name in self.index:
            if mask & _IN_OPEN:
                self._opens[name] += 1
                self._unread.discard(name)
                if self._wants[name]:
                    self._wants[name].popleft()  # the read asked for it has it open
            elif mask & _IN_CLOSE_NOWRITE and self._opens[name]:
                self._opens[name] -= 1

    def _want(self, name: str, token: str) -> None:
        i, n = self.index[name], len(self.index)
        gap = abs(i - self._cursor)
        if (min(gap, n - gap) if self.repeat else gap) > self.limit:
            # Far from where its reader was: the pipeline was built again (one cache serves
            # one pipeline); the old one's waits are over, its wants must not take the room.
            for wants in self._wants.values():
                wants.clear()
        self._cursor = i
        failed = self._failed.pop(name, None)
        if failed is not None:  # a download no reader was told about: this one is
            self._tell(name, token, failed)
            return
        self._wants[name].append((token, time.monotonic()))

    def _tell(self, name: str, token: str, error: TfpipesError) -> None:
        kind = "user" if isinstance(error, UserError) else "retryable"
        log.debug("streaming %s: %s", self.url, error)
        self._put(TICKET, uuid.uuid4().hex.encode())  # later reads: another token
        self._put(f"{ANSWER}{token}-{name}", f"{kind}|{first_line(error)}".encode())

    def _reap(self) -> bool:
        """Take in the finished downloads; whether there were any."""
        reaped = False
        for name, future in list(self._inflight.items()):
            if not future.done():
                continue
            del self._inflight[name]
            reaped = True
            try:
                if future.result():
                    self._ready.add(name)
                    self._unread.add(name)
                continue
            except TfpipesError as e:
                error = e
            except OSError as e:
                kind = RetryableError if e.errno == errno.ENOSPC else UserError
                error = kind(f"{self.directory}: cannot cache a shard: {e.strerror}")
            waiting = self._wants.pop(name, ())
            for token, _ in waiting:
                self._tell(name, token, error)
            if not waiting and isinstance(error, UserError):
                self._failed[name] = error  # fetched again only for a reader, who is told
            log.debug("%s: %s not fetched: %s", self.tag, name, error)
        return reaped

    def _sequence(self) -> list[str]:
        """The share's shard names in read order from the last one asked for."""
        names, n = list(self.index), len(self.index)
        if self.keep:
            return names
        if self.repeat:
            return [names[(self._cursor + i) % n] for i in range(n)]
        return names[self._cursor :]

    def _behind(self, name: str) -> int:
        """How many places before the last shard asked for ``name`` comes in read order."""
        d = self._cursor - self.index[name]
        return d % len(self.index) if self.repeat else (d if d >= 0 else len(self.index))

    def _plan(self) -> None:
        """Remove the shards no longer among those to keep; fetch those missing."""
        now = time.monotonic()
        for wants in self._wants.values():  # a reader that asked this long ago gave up
            while wants and now - wants[0][1] > self.wait_s + 5:
                wants.popleft()
        # newest first: the reader's latest wants before any it may have abandoned
        wanted = sorted(
            (n for n, w in self._wants.items() if w), key=lambda n: -self._wants[n][-1][1]
        )
        busy = {n for n in (*self._ready, *self._inflight) if self._opens[n]} | set(wanted)
        keep, sequence = set(busy), self._sequence()
        for name in sequence:
            if len(keep) >= self.limit:
                break
            keep.add(name)
        if not self.keep:
            for name in sorted(self._ready - keep, key=self._behind, reverse=True):
                # A shard not opened yet just before the last one asked for: its reader's
                # want is on its way (the interleave prepares several shards at once).
                spare = name in self._unread and 0 < self._behind(name) <= self.limit
                if not spare or self._short_of_room(wanted):
                    self._evict(name)
        for name in (*wanted, *sequence):
            if self._on_disk() >= self.limit or len(self._inflight) >= FETCHERS:
                break
            if name in keep and name not in self._ready and name not in self._inflight:
                if name not in self._failed:
                    shard = self.shards[self.index[name]]
                    future = self._pool.submit(self._fetch, shard, name)
                    future.add_done_callback(lambda _: self._watch.wake())  # reap it at once
                    self._inflight[name] = future

    def _on_disk(self) -> int:
        return len(self._ready) + len(self._inflight)

    def _short_of_room(self, wanted: list[str]) -> bool:
        """Whether a shard a reader waits for is neither there nor has room to be fetched."""
        missing = [n for n in wanted if n not in self._ready and n not in self._inflight]
        return bool(missing) and self._on_disk() >= self.limit

    def _evict(self, name: str) -> None:
        self._ready.discard(name)
        self._unread.discard(name)
        self._unlink(name)

    def _fetch(self, shard, name: str) -> bool:
        """Download ``shard`` as ``name``: True once in place, False if the cache closed."""
        tmp = f".{name}.part-{uuid.uuid4().hex[:8]}"
        with self._lock:
            if self._closed:
                return False
            self._written.add(tmp)
        try:
            storage.download_file(
                storage.join(self.url, shard.path),
                os.path.join(self.directory, tmp),
                shard.crc32c,
                abort=self._abort,
            )
            if not self._rename(tmp, name):  # whole or not at all: readers wait for this name
                return False
        finally:
            self._unlink(tmp, own=False)  # its name is this call's own
        self.fetched += 1
        log.debug("%s: fetched %s", self.tag, name)
        return True

    def close(self) -> None:
        """Stop fetching, abort the downloads in flight and wait for them (up to
        CLOSE_WAIT_S), then delete every file this cache wrote and its directory; a download
        that returns later puts nothing in place. Again: nothing to do."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._abort.set()
        self._thread.join(timeout=CLOSE_WAIT_S)
        if self._thread.is_alive():
            log.warning("%s: a download did not stop within %g s", self.directory, CLOSE_WAIT_S)
        self._remove_own()
        if self._claim is not None:
            self._claim.release()
