"""What ``tracker spool status|drain DIR`` and ``tracker send FILE --spool DIR`` do.

Plain arguments in, an exit code out (0 done, 1 something not delivered, 2 usage,
configuration or an unreadable directory); the command modules only parse and wire.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional, TextIO

from tracker._spool_files import (
    CORRUPT_SUFFIX,
    LOCK_SUFFIX,
    SUFFIX,
    Lock,
    connect,
    read_meta,
    spool_files,
)
from tracker._tracker import Tracker
from tracker.cli._jsonl import BadLine
from tracker.errors import ConfigError, TrackerError


def file_status(path: str, now: float) -> dict[str, Any]:
    """What one spool file holds and whose it is, without changing it."""
    size = sum(_size(path + s) for s in ("", "-wal", "-shm"))
    info: dict[str, Any] = {"file": os.path.basename(path), "bytes": size}
    try:
        lock = Lock.try_acquire(path + LOCK_SUFFIX)
    except OSError:
        lock = None  # cannot even open the lock file: report the owner as unknown
        info["owner"] = "unknown"
    try:
        conn = connect(path, create=False, fsync=False, readonly=True)
        try:
            meta = read_meta(conn)
            count, oldest = conn.execute("SELECT count(*), min(at) FROM events").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        info.update(owner=info.get("owner", "?"), events=None, error=str(exc))
        if lock is not None:
            lock.release()
        return info
    if "owner" not in info:
        info["owner"] = "gone" if lock is not None else "live"
    if lock is not None:
        lock.release()
    info.update(
        pid=int(meta["pid"]) if meta.get("pid", "").isdigit() else None,
        host=meta.get("host"),
        events=int(count),
        oldest_age=None if oldest is None else max(0.0, now - float(oldest)),
    )
    return info


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def status(directory: str, *, as_json: bool = False, out: Optional[TextIO] = None) -> int:
    """``tracker spool status DIR``: events and bytes waiting per file, the oldest event's
    age and whose process owns the file (live, or gone: the next tracker sends it)."""
    out = out or sys.stdout
    if not os.path.isdir(directory):
        print(f"tracker spool status: {directory} is not a directory", file=sys.stderr)
        return 2
    now = time.time()
    files = [file_status(path, now) for path in spool_files(directory)]
    corrupt = sorted(n for n in os.listdir(directory) if n.endswith(SUFFIX + CORRUPT_SUFFIX))
    waiting = sum(f["events"] or 0 for f in files)
    if as_json:
        summary = {"directory": directory, "files": files, "corrupt": corrupt, "events": waiting}
        out.write(json.dumps(summary) + "\n")
        return 0
    if not files and not corrupt:
        out.write(f"{directory}: no spool files\n")
        return 0
    out.write(f"{'FILE':<40} {'OWNER':<16} {'EVENTS':>8} {'BYTES':>12} {'OLDEST':>9}\n")
    for f in files:
        owner = f["owner"] + (f" (pid {f['pid']})" if f.get("pid") else "")
        events = "?" if f["events"] is None else str(f["events"])
        age = _age(f.get("oldest_age"))
        out.write(f"{f['file']:<40} {owner:<16} {events:>8} {f['bytes']:>12} {age:>9}\n")
    for name in corrupt:
        out.write(
            f"{name:<40} {'corrupt':<16} {'-':>8} {_size(os.path.join(directory, name)):>12}\n"
        )
    gone = sum(f["events"] or 0 for f in files if f["owner"] == "gone")
    out.write(f"{waiting} event(s) waiting in {len(files)} file(s)")
    if gone:
        out.write(f"; {gone} of processes that are gone (`tracker spool drain` sends them)")
    out.write("\n")
    return 0


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def drain(
    directory: str,
    *,
    api_key: Optional[str],
    options: Optional[Mapping[str, Any]] = None,
    timeout: Optional[float] = None,
    out: Optional[TextIO] = None,
) -> int:
    """``tracker spool drain DIR``: send every event that processes gone before left in
    DIR (files of live processes and of other keys are left alone), then exit: 0 all
    delivered, 1 some failed or still waiting, 2 usage or configuration."""
    out = out or sys.stdout
    if not os.path.isdir(directory):
        print(f"tracker spool drain: {directory} is not a directory", file=sys.stderr)
        return 2
    t = _tracker("spool drain", directory, api_key, options)
    if t is None:
        return 2
    try:
        t.flush(timeout)
    finally:
        _shut_down(t, timeout)
    s = t.stats()
    out.write(
        f"{directory}: {s.recovered} event(s) found, {s.delivered} delivered, "
        f"{s.failed} failed, {s.pending} still waiting\n"
    )
    return 0 if s.failed == 0 and s.pending == 0 else 1


def _tracker(
    command: str, directory: str, api_key: Optional[str], options: Optional[Mapping[str, Any]]
) -> Optional[Tracker]:
    """The Tracker over the spool ``directory``, with no exit flush; None once a
    ConfigError was said on stderr (exit code 2)."""
    settings: dict[str, Any] = dict(options or {})
    settings.update(spool=directory, flush_at_exit=False)
    try:
        if api_key is not None:
            return Tracker(api_key, **settings)
        return Tracker(**settings)
    except ConfigError as exc:
        print(f"tracker {command}: {exc}", file=sys.stderr)
        return None


def _shut_down(t: Tracker, timeout: Optional[float]) -> None:
    """After a flush within ``timeout`` (None: until done): what still waits stays in the
    spool; requests in flight get at most 5 s more (none after a flush that waited)."""
    t.shutdown(timeout=0 if timeout is None else min(timeout, 5.0))


class SendProgress:
    """Where an upload of one input file got to, kept in the spool with its events, so
    a run killed outright (no resume state written) goes on after the last line whose
    event was accepted: its events are on disk, sent by the next run as recovered ones."""

    def __init__(self, tracker: Tracker, source: str) -> None:
        st = os.stat(source)
        # The same path with other contents (a new inode) starts from the beginning.
        self.name = f"send:{os.path.abspath(source)}:{st.st_dev}:{st.st_ino}"
        spool = tracker._core.spool
        self._spool = spool
        mark = spool.recovered_marks.get(self.name) if spool is not None else None
        self.resume_after = mark if isinstance(mark, int) and mark > 0 else 0

    def read(self, line: int) -> None:
        """Lines up to ``line`` are handled (their events accepted, or dead-lettered)."""
        if self._spool is not None:
            self._spool.set_mark(self.name, line)

    def complete(self) -> None:
        """The whole file is delivered: a later run of it starts afresh."""
        if self._spool is not None:
            self._spool.set_mark(self.name, None)


def send(
    source: str,
    directory: str,
    *,
    api_key: Optional[str],
    options: Optional[Mapping[str, Any]] = None,
    to_arguments: Callable[[bytes], dict[str, Any]],
    timeout: Optional[float] = None,
    out: Optional[TextIO] = None,
) -> int:
    """``tracker send FILE --spool DIR``: upload FILE's events through a spool. A run
    killed at any moment resumes, when started again, after the last accepted line, and
    the events accepted but not delivered are sent first, with their original ids.
    ``to_arguments`` turns a line into ``track()`` keyword arguments (the command line's
    parser; it raises for a bad line)."""
    out = out or sys.stdout
    try:
        lines = open(source, "rb")  # noqa: SIM115  (closed below, read line by line)
    except OSError as exc:
        print(f"tracker send: cannot read {source}: {exc}", file=sys.stderr)
        return 2
    with lines:
        t = _tracker("send", directory, api_key, options)
        if t is None:
            return 2
        progress = SendProgress(t, source)
        bad = _send_lines(t, progress, lines, to_arguments)
    try:
        if t.flush(timeout) and t.stats().failed == 0 and bad == 0:
            progress.complete()  # committed by the shutdown below
    finally:
        _shut_down(t, timeout)
    s = t.stats()
    out.write(
        f"{source}: resumed after line {progress.resume_after}, {s.recovered} recovered, "
        f"{s.tracked} read, {s.delivered} delivered, {s.failed} failed, "
        f"{bad} bad line(s), {s.pending} left in {directory}\n"
    )
    return 0 if bad == 0 and s.failed == 0 and s.pending == 0 else 1


def _send_lines(
    t: Tracker,
    progress: SendProgress,
    lines: Iterable[bytes],
    to_arguments: Callable[[bytes], dict[str, Any]],
) -> int:
    bad = 0
    for number, data in enumerate(lines, 1):
        if number <= progress.resume_after or not data.strip():
            continue
        try:
            arguments = to_arguments(data)  # the parser's own error for a bad line
            t.track(**arguments)
        except (BadLine, ValueError, TrackerError, TypeError) as exc:
            bad += 1
            print(f"tracker send: line {number}: {exc}", file=sys.stderr)
        progress.read(number)
    return bad
