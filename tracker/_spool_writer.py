"""The spool's writer thread: group commits, reading waiting events back, failing disks."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from tracker._answers import encode
from tracker._event import CustomEvent
from tracker._spool_files import Lock, Orphan, move_aside, remove_files

if TYPE_CHECKING:
    from tracker._buffer import Buffer

logger = logging.getLogger("tracker")

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
BATCH_MAX = 2000  # operations per transaction: bounds the memory of one commit


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


class SpoolWriter:
    """The part of the spool store that runs on its own thread (``_run``): it alone does
    I/O, and changes what the buffer's lock guards only through ``Buffer.store_changed``."""

    directory: str
    path: Optional[str]
    spooled: int
    backlog: int
    _interval: float
    _window: int
    _mem: deque[CustomEvent]
    _keys: dict[int, Key]
    _own_backlog: int
    _own_cursor: int
    _own_on_disk: int
    _rows: int
    _row_bytes: float
    _ops: deque[tuple[Any, Optional[CustomEvent], bool]]
    _queued: int
    _done: int
    _marks: dict[str, Any]
    _marks_dirty: bool
    _cond: threading.Condition
    _asleep: bool
    _closing: bool
    _disk: bool
    _warned: bool  # the one warning about our disk was logged
    _writer: Optional[threading.Thread]
    _orphans: list[Orphan]
    _buffer: Optional[weakref.ref[Buffer]]  # weak: a tracker nobody holds ends its spool
    _conn: Optional[sqlite3.Connection]
    _lock: Optional[Lock]

    def _run(self) -> None:
        try:
            while self._next_round():
                ops = self._ops
                with self._cond:
                    # Marks only with every operation queued before them: never ahead.
                    marks = dict(self._marks) if self._marks_dirty else None
                    if len(ops) > BATCH_MAX:
                        marks = None
                    self._marks_dirty = self._marks_dirty and marks is None
                batch = [ops.popleft() for _ in range(min(len(ops), BATCH_MAX))]
                self._commit(batch, marks)
                with self._cond:
                    self._done += len(batch)
                    self._cond.notify_all()
                self._refill()
        except Exception:
            logger.exception("spool writer failed; events are kept in memory only")
            self._broken_mode()
        finally:
            self._finish()

    def _changed(self, change: Callable[[], tuple[int, int]]) -> None:
        buffer = self._buffer() if self._buffer is not None else None
        if buffer is not None:
            buffer.store_changed(change)

    def _next_round(self) -> bool:
        """Wait for work: ops (after the group-commit interval), room to read back into,
        or the close. False once closed with nothing left to write."""
        with self._cond:
            while True:
                if self._ops or self._marks_dirty:
                    break
                if self._buffer is not None and self._buffer() is None:
                    # The pipeline was collected (its Tracker dropped, nothing pending):
                    # close, so that its file is released.
                    self._closing = True
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
        if self._disk and conn is not None:
            if inserts or own_deletes or marks is not None:
                self._write_own(conn, inserts, own_deletes, marks)
        else:
            # Pushed to wait on disk just before the disk failed: memory keeps them.
            self._to_memory([(rid, ev) for rid, (ev, disk_only) in inserts.items() if disk_only])
            if conn is not None and own_deletes:
                self.spooled -= _best_effort_delete(conn, own_deletes)
        for orphan, rows in adopted.items():
            self.spooled -= _best_effort_delete(orphan.conn, rows)
            orphan.unsettled -= len(rows)
        if not self._marks_dirty:  # (their marks are in our file now)
            done = [o for o in self._orphans if not o.unread and o.unsettled <= 0]
            for orphan in done:
                orphan.close(remove=True)
            if done:
                self._orphans = [o for o in self._orphans if o not in done]

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
        if not self._warned:
            self._warned = True
            logger.warning(
                "spool: cannot write to %s (%s): events are kept in memory only from now "
                "on (stats().spooled counts what is on disk)",
                self.directory,
                exc,
            )
        self._to_memory(unwritten)

    def _to_memory(self, unwritten: list[tuple[int, CustomEvent]]) -> None:
        def to_memory() -> tuple[int, int]:
            self._disk = False
            for rid, event in unwritten:
                self._keys[id(event)] = rid
                self._mem.append(event)
            self._own_backlog -= len(unwritten)
            self.backlog -= len(unwritten)
            return 0, 0

        self._changed(to_memory)

    def _broken_mode(self) -> None:
        if self._disk:
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

        self._changed(apply)

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
