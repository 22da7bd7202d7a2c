"""The durable spool: a Store keeping every unsettled event in SQLite, with a group-commit writer.

``push``/``pop``/``settled`` run under the buffer's lock and do no I/O: they queue an
operation for the writer thread, which commits them together every ``spool_interval``
(an event settled before then is never written at all). Memory holds at most
``max_queue_size`` events; the rest wait on disk and the writer reads them back, oldest
first, as room is made. Files of processes that are gone are adopted at open and sent
first. A disk that fails turns the store into a memory store, never an exception.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional

from tracker import _lifecycle
from tracker._config import Config
from tracker._counters import QUEUE_OVERFLOW, SPOOL_FULL
from tracker._event import CustomEvent
from tracker._spool_files import (
    Lock,
    Orphan,
    adopt_orphans,
    create_file,
    fingerprint,
    new_name,
)
from tracker._spool_writer import Key, SpoolWriter

if TYPE_CHECKING:
    from tracker._buffer import Buffer

logger = logging.getLogger("tracker")


class SpoolStore(SpoolWriter):
    """Waiting events in memory (up to ``max_queue_size`` resident), all of them on disk."""

    def __init__(self, config: Config) -> None:
        assert config.spool is not None
        self.directory = os.path.abspath(config.spool)
        self._interval = config.spool_interval
        self._max_bytes = config.spool_max_bytes
        self._window = config.max_queue_size
        self._fsync = config.spool_fsync
        self._fp = fingerprint(config.api_key, config.endpoint)
        self._mem: deque[CustomEvent] = deque()
        self.pop = self._mem.popleft
        self._keys: dict[int, Key] = {}  # id(event) -> its row, for every resident event
        self.backlog = 0  # waiting events on disk only (adopted ones included)
        self._own_backlog = 0  # of which ours: rows from _own_cursor on
        self._own_cursor = 0
        self._own_on_disk = 0  # (writer) of those, committed and not read back yet
        self._rows = 0  # unsettled rows, on disk or queued: what the disk bound counts
        self._row_bytes = 300.0  # running estimate of the disk bytes of a row
        self.spooled = 0  # (writer) committed rows not deleted yet
        self._next_id = 0
        self._ops: deque[tuple[Any, Optional[CustomEvent], bool]] = deque()
        self._queued = 0  # operations queued so far ...
        self._done = 0  # ... and of those, written (FIFO)
        self._sync = config.spool_interval == 0
        self._marks: dict[str, Any] = {}
        self._marks_dirty = False
        self.recovered_marks: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._asleep = False
        self._closing = False
        self._disk = False  # our own file takes writes
        self._warned = False
        self._writer: Optional[threading.Thread] = None
        self._orphans: list[Orphan] = []
        self._buffer: Optional[weakref.ref[Buffer]] = None
        self._conn: Optional[sqlite3.Connection] = None
        self._lock: Optional[Lock] = None
        self.path: Optional[str] = None

    # -- the Store protocol (under the buffer's lock; no I/O) -----------------------------

    def __len__(self) -> int:
        return len(self._mem)

    @property
    def full_reason(self) -> str:
        return SPOOL_FULL if self._disk else QUEUE_OVERFLOW

    def has_room(self, pending: int) -> bool:
        if self._disk:
            return self._rows * self._row_bytes < self._max_bytes
        # Memory only (the disk failed): max_queue_size bounds what memory holds.
        return pending - self.backlog < self._window

    def push(self, event: CustomEvent) -> None:
        self._next_id = rid = self._next_id + 1
        self._rows += 1
        if not self._disk:
            self._keys[id(event)] = rid
            self._mem.append(event)
        elif self.backlog or len(self._keys) >= self._window:
            # Behind events on disk (FIFO), or memory is full: this one waits on disk.
            if not self._own_backlog:
                self._own_cursor = rid
            self._own_backlog += 1
            self.backlog += 1
            self._ops.append((rid, event, True))
        else:
            self._keys[id(event)] = rid
            self._mem.append(event)
            self._ops.append((rid, event, False))
        self._queued += 1  # after the append: the writer reads it without the lock
        if self._asleep:
            self._kick()

    def drain(self) -> list[CustomEvent]:
        events = list(self._mem)
        self._mem.clear()
        return events

    def settled(self, events: Iterable[CustomEvent]) -> None:
        keys = self._keys
        ops = self._ops
        for event in events:
            key = keys.pop(id(event), None)
            if key is not None:
                self._rows -= 1
                ops.append((key, None, False))
                self._queued += 1
        if self._asleep:
            self._kick()

    def _kick(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- outside the buffer's lock ---------------------------------------------------------

    def admitted(self) -> None:
        """After track() admitted an event (outside the lock). With ``spool_interval=0``
        wait for its commit; otherwise only when the writer is more than
        ``max_queue_size`` operations behind (a burst faster than the disk): what memory
        holds stays bounded."""
        if self._sync or len(self._ops) > self._window:
            self.wait_durable()

    def wait_durable(self) -> None:
        """Return once everything queued so far is committed."""
        if not self._disk:
            return
        target = self._queued
        with self._cond:
            while self._done < target and self._disk and self._writer is not None:
                self._cond.notify_all()
                self._cond.wait(1.0)

    def set_mark(self, name: str, value: Any) -> None:
        """Record ``value`` under ``name`` in our file, committed with the events pushed
        before this call (never ahead of them)."""
        with self._cond:
            if value is None:
                self._marks.pop(name, None)
            else:
                self._marks[name] = value
            self._marks_dirty = True
            if self._asleep:  # else the next round takes it (a mark costs no commit)
                self._cond.notify_all()

    def open(self, buffer: Buffer) -> None:
        """Create our file, adopt the orphans of the directory, start the writer. A disk
        we cannot use leaves a memory store (warned once)."""
        self._buffer = weakref.ref(buffer)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self.path = new_name(self.directory)
            self._lock, self._conn = create_file(self.path, self._fp, self._fsync)
        except (OSError, sqlite3.Error) as exc:
            self._warned = True
            logger.warning(
                "spool: cannot use %s (%s): events are kept in memory only", self.directory, exc
            )
            return
        orphans = adopt_orphans(self.directory, self._fp, self._fsync, skip=self.path)
        marks: dict[str, Any] = {}
        for orphan in orphans:
            for name, value in orphan.marks().items():
                if name not in marks or _later(value, marks[name]):
                    marks[name] = value
        self.recovered_marks = dict(marks)
        self._marks = marks
        self._marks_dirty = bool(marks)
        total = sum(orphan.count for orphan in orphans)

        def adopt() -> tuple[int, int]:
            self._disk = True
            self._orphans = orphans
            self.backlog += total
            self._rows += total
            self.spooled += total
            return total, 0

        buffer.store_changed(adopt)
        if total:
            logger.info(
                "spool: adopted %d event(s) from %d file(s) of earlier processes in %s",
                total,
                len(orphans),
                self.directory,
            )
        self._writer = threading.Thread(target=self._run, name="px-tracker-spool", daemon=True)
        self._writer.start()
        _register(self)

    def close(self, timeout: Optional[float]) -> None:
        """Commit what is queued, close the files (removing ours when empty) and release
        their locks, so that the next process adopts what is left."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout)

    # -- the writer thread -----------------------------------------------------------------

    def forget_after_fork(self) -> None:
        """In a forked child: this store is the parent's. Its connections are kept from
        ever being closed here (closing could checkpoint the parent's log) and its lock
        descriptors are closed (the parent keeps the locks)."""
        _ZOMBIES.extend(c for c in [self._conn] + [o.conn for o in self._orphans] if c)
        self._conn = None
        for lock in [self._lock] + [o.lock for o in self._orphans]:
            if lock is not None:
                lock.forget()
        self._orphans = []
        self._disk = False
        self._writer = None
        self._cond = threading.Condition()


def _later(a: Any, b: Any) -> bool:
    try:
        return bool(a > b)
    except TypeError:
        return False


_stores: weakref.WeakSet[SpoolStore] = weakref.WeakSet()
_ZOMBIES: list[sqlite3.Connection] = []


def _register(store: SpoolStore) -> None:
    _stores.add(store)


def _after_fork() -> None:
    for store in list(_stores):
        store.forget_after_fork()
    _stores.clear()


def close_all(timeout: float = 2.0) -> None:
    """At exit: commit and close every open spool (also of trackers not flushed at exit)."""
    for store in list(_stores):
        store.close(timeout)


_lifecycle.on_fork(_after_fork)
_lifecycle.on_exit(close_all)
