"""The durable spool: a Store keeping every unsettled event in SQLite, with a group-commit writer.

``push``/``pop``/``settled`` run under the buffer's lock and do no I/O: they queue an
operation for the writer thread, which commits them together every ``spool_interval``
(an event settled before then is never written at all). Memory holds at most
``max_queue_size`` events; the rest wait on disk and the writer reads them back, oldest
first, as room is made. Files of processes that are gone are adopted at open and sent
first. A disk that fails turns the store into a memory store, never an exception.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional, Union

from tracker import _lifecycle
from tracker._callbacks import Warnings
from tracker._config import Config
from tracker._counters import QUEUE_OVERFLOW, SPOOL_FULL
from tracker._event import CustomEvent
from tracker._spool_files import (
    Lock,
    Orphan,
    adopt_orphans,
    create_file,
    fingerprint,
    move_aside,
    new_name,
    remove_files,
)
from tracker._transport import encode

if TYPE_CHECKING:
    from tracker._buffer import Buffer

logger = logging.getLogger("tracker")

# A row key: an int for a row of our own file, (orphan, rowid) for an adopted file's row.
Key = Union[int, tuple[Orphan, int]]
_WIRE = {
    "eventId": "event_id",
    "identifyId": "identify_id",
    "propertyKey": "property_key",
    "date": "date",
    "userType": "user_type",
    "eventName": "event_name",
    "eventType": "event_type",
    "sessionId": "session_id",
    "accountId": "account_id",
    "globalContext": "global_context",
    "attributes": "attributes",
    "url": "url",
    "referrer": "referrer",
    "remoteHost": "remote_host",
}
_REQUIRED = ("event_id", "identify_id", "property_key", "user_type", "event_name")
ROW_OVERHEAD = 40  # bytes of SQLite bookkeeping per row beyond its body, roughly
READ_CHUNK = 1000


def decode(body: bytes) -> Optional[CustomEvent]:
    """The event a row holds, None when it is not one (then it cannot be sent)."""
    try:
        wire = json.loads(body)
        fields = {_WIRE[k]: v for k, v in wire.items()}
        if not all(isinstance(fields.get(f), str) for f in _REQUIRED):
            return None
        date = fields.get("date")
        if isinstance(date, bool) or not isinstance(date, int):
            return None
        return CustomEvent(**fields)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


class SpoolStore:
    """Waiting events in memory (up to ``max_queue_size`` resident), all of them on disk."""

    def __init__(self, config: Config, warnings: Warnings) -> None:
        assert config.spool is not None
        self.directory = os.path.abspath(config.spool)
        self._interval = config.spool_interval
        self._max_bytes = config.spool_max_bytes
        self._window = config.max_queue_size
        self._fsync = config.spool_fsync
        self._fp = fingerprint(config.api_key, config.endpoint)
        self._warnings = warnings
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
        self._pushed = 0  # operations queued so far ...
        self._committed = 0  # ... and of those, written
        self._marks: dict[str, Any] = {}
        self._marks_dirty = False
        self.recovered_marks: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._asleep = False
        self._closing = False
        self._disk = False  # our own file takes writes
        self._writer: Optional[threading.Thread] = None
        self._orphans: list[Orphan] = []
        self._buffer: Optional[Buffer] = None
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
        self._pushed += 1  # after the append: the writer reads it without the lock
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
        if self._asleep:
            self._kick()

    def _kick(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- outside the buffer's lock ---------------------------------------------------------

    def wait_durable(self) -> None:
        """Return once everything pushed so far is committed (``spool_interval=0``)."""
        if not self._disk:
            return
        target = self._pushed
        with self._cond:
            while self._committed < target and self._disk and self._writer is not None:
                self._cond.notify_all()
                self._cond.wait(1.0)

    def set_mark(self, name: str, value: Any) -> None:
        """Record ``value`` under ``name`` in our file, committed with the events pushed
        before this call (never ahead of them)."""
        with self._cond:
            self._marks[name] = value
            self._marks_dirty = True
            self._cond.notify_all()

    def open(self, buffer: Buffer) -> None:
        """Create our file, adopt the orphans of the directory, start the writer. A disk
        we cannot use leaves a memory store (warned once)."""
        self._buffer = buffer
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self.path = new_name(self.directory)
            self._lock, self._conn = create_file(self.path, self._fp, self._fsync)
        except (OSError, sqlite3.Error) as exc:
            self._warnings.warn(
                "spool",
                "spool: cannot use %s (%s): events are kept in memory only",
                self.directory,
                exc,
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

    def _run(self) -> None:
        try:
            while self._next_round():
                with self._cond:
                    marks = dict(self._marks) if self._marks_dirty else None
                    self._marks_dirty = False
                pushed = self._pushed
                ops = self._ops
                batch = [ops.popleft() for _ in range(len(ops))]
                self._commit(batch, marks)
                with self._cond:
                    self._committed = pushed
                    self._cond.notify_all()
                self._refill()
        except Exception:
            logger.exception("spool writer failed; events are kept in memory only")
            self._broken_mode()
        finally:
            self._finish()

    def _next_round(self) -> bool:
        """Wait for work: ops (after the group-commit interval), room to read back into,
        or the close. False once closed with nothing left to write."""
        with self._cond:
            while True:
                if self._ops or self._marks_dirty:
                    break
                if self._closing:
                    return False
                if self._can_refill():
                    return True
                self._asleep = True
                try:
                    self._cond.wait(1.0)
                finally:
                    self._asleep = False
            if self._interval and not self._closing:
                self._cond.wait(self._interval)
            return True

    def _can_refill(self) -> bool:
        if self._closing or not (self._own_on_disk or any(o.unread for o in self._orphans)):
            return False
        room = self._window - len(self._keys)
        return room >= min(READ_CHUNK, max(1, self._window // 4)) or (room > 0 and not self._mem)

    def _commit(self, batch: list[tuple[Any, Optional[CustomEvent], bool]], marks: Any) -> None:
        inserts: dict[int, tuple[CustomEvent, bool]] = {}
        own_deletes: list[tuple[int]] = []
        adopted: dict[Orphan, list[tuple[int]]] = {}
        for key, event, disk_only in batch:
            if event is not None:
                inserts[key] = (event, disk_only)
            elif isinstance(key, int):
                if inserts.pop(key, None) is None:
                    own_deletes.append((key,))
            else:
                adopted.setdefault(key[0], []).append((key[1],))
        conn = self._conn
        if conn is not None and (inserts or own_deletes or marks is not None):
            if self._disk:
                self._write_own(conn, inserts, own_deletes, marks)
            elif own_deletes:
                self.spooled -= _best_effort_delete(conn, own_deletes)
        for orphan, rows in adopted.items():
            deleted = _best_effort_delete(orphan.conn, rows)
            self.spooled -= deleted
            orphan.unsettled -= len(rows)
            if not orphan.unread and orphan.unsettled <= 0:
                orphan.close(remove=True)
                self._orphans = [o for o in self._orphans if o is not orphan]

    def _write_own(
        self,
        conn: sqlite3.Connection,
        inserts: dict[int, tuple[CustomEvent, bool]],
        deletes: list[tuple[int]],
        marks: Any,
    ) -> None:
        now = time.time()
        rows = [(rid, now, encode(event)) for rid, (event, _) in inserts.items()]
        try:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO events VALUES (?, ?, ?)", rows)
            deleted = conn.executemany("DELETE FROM events WHERE id = ?", deletes).rowcount
            if marks is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('marks', ?)", (json.dumps(marks),)
                )
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            lost = [(rid, ev) for rid, (ev, disk_only) in inserts.items() if disk_only]
            self._disk_failed(exc, lost)
            return
        self.spooled += len(rows) - max(0, deleted)
        self._own_on_disk += sum(1 for _, disk_only in inserts.values() if disk_only)
        if rows:
            size = sum(len(r[2]) for r in rows) / len(rows) + ROW_OVERHEAD
            self._row_bytes = 0.8 * self._row_bytes + 0.2 * size

    def _disk_failed(self, exc: BaseException, unwritten: list[tuple[int, CustomEvent]]) -> None:
        """Our file takes no more writes (full, read-only, I/O error): from now on events
        live in memory, bounded by max_queue_size; the ones that were to wait on disk
        join the memory queue."""
        self._warnings.warn(
            "spool",
            "spool: cannot write to %s (%s): events are kept in memory only from now on "
            "(stats().spooled counts what is on disk)",
            self.directory,
            exc,
        )

        def to_memory() -> tuple[int, int]:
            self._disk = False
            for rid, event in unwritten:
                self._keys[id(event)] = rid
                self._mem.append(event)
            self._own_backlog -= len(unwritten)
            self.backlog -= len(unwritten)
            return 0, 0

        assert self._buffer is not None
        self._buffer.store_changed(to_memory)

    def _broken_mode(self) -> None:
        if self._buffer is not None and self._disk:
            self._disk_failed(RuntimeError("writer failed"), [])

    def _refill(self) -> None:
        """Read waiting events back from disk while memory has room, oldest first."""
        while self._can_refill():
            take = min(READ_CHUNK, self._window - len(self._keys))
            source = next((o for o in self._orphans if o.unread), None)
            try:
                if source is not None:
                    rows = source.conn.execute(
                        "SELECT id, body FROM events WHERE id >= ? ORDER BY id LIMIT ?",
                        (source.cursor, min(take, source.unread)),
                    ).fetchall()
                else:
                    assert self._conn is not None
                    rows = self._conn.execute(
                        "SELECT id, body FROM events WHERE id >= ? ORDER BY id LIMIT ?",
                        (self._own_cursor, min(take, self._own_on_disk)),
                    ).fetchall()
            except sqlite3.Error as exc:
                self._unreadable(source, exc)
                continue
            self._read_back(source, rows)

    def _read_back(self, source: Optional[Orphan], rows: list[Any]) -> None:
        good: list[tuple[Key, CustomEvent]] = []
        bad: list[tuple[int]] = []
        for rid, body in rows:
            event = decode(bytes(body))
            if event is None:
                bad.append((rid,))
            else:
                good.append((rid if source is None else (source, rid), event))
        expected = source.unread if source is not None else self._own_on_disk
        # Rows missing from a file (nothing else writes it) count as lost, like bad ones.
        lost = len(bad) + (expected if not rows else 0)
        read = len(rows) + (expected if not rows else 0)
        if bad:
            conn = source.conn if source is not None else self._conn
            if conn is not None:
                self.spooled -= _best_effort_delete(conn, bad)
            logger.error("spool: %d unreadable event(s) in %s dropped", len(bad), self.directory)
        last = rows[-1][0] + 1 if rows else 0

        def apply() -> tuple[int, int]:
            for key, event in good:
                self._keys[id(event)] = key
                self._mem.append(event)
            self.backlog -= read
            self._rows -= lost
            if source is not None:
                source.unread -= read
                source.unsettled -= lost
                source.cursor = max(source.cursor, last)
            else:
                self._own_backlog -= read
                self._own_on_disk -= read
                self._own_cursor = max(self._own_cursor, last)
            return 0, lost

        assert self._buffer is not None
        self._buffer.store_changed(apply)

    def _unreadable(self, source: Optional[Orphan], exc: sqlite3.Error) -> None:
        if source is None:
            logger.error("spool: cannot read back %s: %s", self.path, exc)
            # Unreadable events of ours: counted as dropped so the counters still add up.
            self._read_back(None, [])
            return
        source.conn.close()
        move_aside(source.path, exc)
        source.lock.release(unlink=True)
        self._read_back(source, [])
        self._orphans = [o for o in self._orphans if o is not source]

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        path = self.path
        empty = False
        if conn is not None:
            try:
                empty = conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
            except sqlite3.Error:
                empty = False
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        if path is not None and empty:
            remove_files(path)
        if self._lock is not None:
            self._lock.release(unlink=empty)
        for orphan in self._orphans:
            orphan.close(remove=not orphan.unread and orphan.unsettled <= 0)
        with self._cond:
            self._disk = False
            self._writer = None
            self._cond.notify_all()

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


def _best_effort_delete(conn: sqlite3.Connection, rows: list[tuple[int]]) -> int:
    try:
        conn.execute("BEGIN")
        deleted = conn.executemany("DELETE FROM events WHERE id = ?", rows).rowcount
        conn.execute("COMMIT")
        return max(0, deleted)
    except sqlite3.Error as exc:
        logger.debug("spool: delete failed: %s", exc)
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        return 0


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
