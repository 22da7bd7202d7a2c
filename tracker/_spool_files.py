"""Spool files on disk: names, the owner's lock, opening, adopting orphans, moving aside."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import time
from typing import Any, Optional
from urllib.parse import quote

try:
    import fcntl
except ImportError:  # Windows: no flock, so no way to tell a live owner from a dead one
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("tracker")

SUFFIX = ".spool"
LOCK_SUFFIX = ".lock"
CORRUPT_SUFFIX = ".corrupt"
SCHEMA_VERSION = "1"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events"
    " (id INTEGER PRIMARY KEY, at REAL NOT NULL, body BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


def fingerprint(api_key: str, endpoint: str) -> str:
    """Who may send a file's events: a one-way digest of key and endpoint (never the key)."""
    digest = hashlib.sha256(b"px-tracker spool\0" + api_key.encode() + b"\0" + endpoint.encode())
    return digest.hexdigest()[:32]


class Lock:
    """An exclusive ``flock`` on a spool file's lock file. The kernel drops it when the
    holding process dies, however it dies: that is what tells an orphan from a live file
    (a pid file alone cannot: pids are reused)."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def try_acquire(cls, path: str) -> Optional[Lock]:
        """The lock, or None when a live process holds it. OSError when the file cannot
        be opened at all (a read-only directory)."""
        if fcntl is None:
            raise OSError("file locks (fcntl.flock) are not available on this platform")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return cls(path, fd)

    def release(self, unlink: bool = False) -> None:
        if self.fd < 0:
            return
        if unlink:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1

    def forget(self) -> None:
        """In a forked child: close the inherited descriptor. The parent keeps its lock
        (a flock lives while any descriptor of it is open in a process that holds it)."""
        self.release()


def connect(path: str, *, create: bool, fsync: bool, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode, autocommit (transactions are explicit)."""
    mode = "ro" if readonly else ("rwc" if create else "rw")
    conn = sqlite3.connect(
        f"file:{quote(path)}?mode={mode}",
        uri=True,
        check_same_thread=False,  # the writer thread uses it; the store hands it over
        isolation_level=None,
        timeout=5.0,
    )
    try:
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives the process being killed; FULL also
            # fsyncs the log on every commit, so it survives power loss too.
            conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    except BaseException:
        conn.close()
        raise
    return conn


def new_name(directory: str) -> str:
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"
    return os.path.join(directory, f"{host}-{os.getpid()}-{os.urandom(4).hex()}{SUFFIX}")


def create_file(path: str, fp: str, fsync: bool) -> tuple[Lock, sqlite3.Connection]:
    """A new spool file for this process, locked before it exists (so nobody can take it
    for an orphan), created 0600 (its -wal and -shm files inherit the mode)."""
    lock = Lock.try_acquire(path + LOCK_SUFFIX)
    if lock is None:  # a name of 32 random bits taken by a live process: try again
        raise FileExistsError(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        conn = connect(path, create=False, fsync=fsync)
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            meta = {
                "fingerprint": fp,
                "pid": str(os.getpid()),
                "host": socket.gethostname(),
                "created": repr(time.time()),
                "schema": SCHEMA_VERSION,
            }
            conn.execute("BEGIN")
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
    except BaseException:
        remove_files(path)
        lock.release(unlink=True)
        raise
    return lock, conn


def remove_files(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            os.unlink(path + suffix)


def move_aside(path: str, error: BaseException) -> None:
    """A file SQLite cannot read: renamed to ``*.corrupt`` for a human to look at."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.replace(path + suffix, path + CORRUPT_SUFFIX + suffix)
    logger.error(
        "spool file %s is corrupt (%s): moved aside to %s; its events cannot be sent",
        path,
        error,
        path + CORRUPT_SUFFIX,
    )


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return {str(k): str(v) for k, v in conn.execute("SELECT name, value FROM meta")}


def spool_files(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names if n.endswith(SUFFIX))


class Orphan:
    """A spool file whose owner is gone, now locked by us, open, with events to send."""

    def __init__(
        self, path: str, lock: Lock, conn: sqlite3.Connection, meta: dict[str, str], count: int
    ) -> None:
        self.path = path
        self.lock = lock
        self.conn = conn
        self.meta = meta
        self.count = count  # rows at adoption
        self.cursor = 0  # the next rowid to read
        self.unread = count
        self.unsettled = count

    @property
    def created(self) -> float:
        try:
            return float(self.meta.get("created", "0"))
        except ValueError:
            return 0.0

    def marks(self) -> dict[str, Any]:
        raw = self.meta.get("marks")
        if not raw:
            return {}
        try:
            marks = json.loads(raw)
        except ValueError:
            return {}
        return marks if isinstance(marks, dict) else {}

    def close(self, remove: bool) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        if remove:
            remove_files(self.path)
        self.lock.release(unlink=remove)


_mismatch_logged: set[str] = set()


def adopt_orphans(directory: str, fp: str, fsync: bool, skip: str) -> list[Orphan]:
    """Lock and open every spool file of ``directory`` whose owner is gone and that
    belongs to our key and endpoint, oldest first. Corrupt files are moved aside; empty
    ones removed; another key's files are left alone (logged once per file)."""
    found: list[Orphan] = []
    for path in spool_files(directory):
        if path == skip:
            continue
        try:
            lock = Lock.try_acquire(path + LOCK_SUFFIX)
        except OSError as exc:
            logger.debug("spool: cannot lock %s: %s", path, exc)
            continue
        if lock is None:
            continue  # a live process's file: never ours to send
        if not os.path.exists(path):  # removed by its owner just now
            lock.release(unlink=True)
            continue
        try:
            orphan = _open_orphan(path, lock, fsync)
        except sqlite3.DatabaseError as exc:
            move_aside(path, exc)
            lock.release(unlink=True)
            continue
        except (sqlite3.Error, OSError) as exc:
            logger.warning("spool: cannot open %s (%s); left for a later process", path, exc)
            lock.release()
            continue
        if orphan.meta.get("fingerprint") != fp:
            if path not in _mismatch_logged:
                _mismatch_logged.add(path)
                logger.warning(
                    "spool file %s holds events of another API key or endpoint: left alone",
                    path,
                )
            orphan.close(remove=False)
            continue
        if orphan.count == 0 and not orphan.marks():
            orphan.close(remove=True)
            continue
        found.append(orphan)
    found.sort(key=lambda o: o.created)
    return found


def _open_orphan(path: str, lock: Lock, fsync: bool) -> Orphan:
    conn = connect(path, create=False, fsync=fsync)
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()
        if not check or check[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check[0] if check else 'no answer'}")
        meta = read_meta(conn)
        count = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except BaseException:
        conn.close()
        raise
    return Orphan(path, lock, conn, meta, count)
