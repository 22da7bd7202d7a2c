"""``tracker send`` bookkeeping: the dead-letter file, pending lines, the resume state."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from datetime import datetime, timezone
from typing import IO, Any, Optional

from tracker._counters import SHUTDOWN, UNAUTHORIZED
from tracker._event import CustomEvent
from tracker.cli._common import CliError
from tracker.cli._jsonl import BadLine
from tracker.errors import DeliveryError


class DeadLetterError(Exception):
    """The dead-letter file could not be written (disk full...): the run must stop."""


class DeadLetter:
    """The dead-letter file: one JSON object per line not delivered. Not thread-safe by
    itself; the Ledger's lock guards it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        self._file: Optional[IO[str]] = None

    def open(self, append: bool) -> None:
        try:
            self._file = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise CliError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise RuntimeError("dead-letter file not open")
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise DeadLetterError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.written += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if stat.S_ISREG(info.st_mode) and info.st_size == 0:
                os.remove(self.path)  # no litter beside the input when all went well


class Ledger:
    """What ``tracker send`` must remember: the line of each pending event (nothing for
    settled ones, so memory stays flat for any file size), outcomes, and the resume
    watermark. Callbacks from worker threads and the reader share one lock."""

    def __init__(self, dead: DeadLetter, read_through: int) -> None:
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._lines: dict[int, str] = {}  # line -> event id; insertion order = line order
        self._ids: dict[str, list[int]] = {}  # event id -> lines (an id may repeat)
        self._read_through = read_through
        self.dead = dead
        self.delivered = 0
        self.bad = 0
        self.failed: dict[str, int] = {}
        # PX refused the key before accepting a single event: the key is wrong, not the
        # events. Those stay unsettled (a --resume run with the right key sends them)
        # instead of filling the dead-letter file with the whole input.
        self.key_refused: Optional[DeliveryError] = None
        self.write_error: Optional[str] = None
        # Set before an interrupted run shuts the tracker down: what that drops was not
        # refused by anyone, so it stays unsettled too.
        self.interrupted = False

    @property
    def halted(self) -> bool:
        """The run must stop: the key was refused, or dead letters cannot be written."""
        return self.key_refused is not None or self.write_error is not None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._lines)

    def wait_for_room(self, limit: int, timeout: float) -> bool:
        with self._room:
            if len(self._lines) >= limit:
                self._room.wait(timeout)
            return len(self._lines) < limit

    def add(self, line: int, event_id: str) -> None:
        with self._lock:
            self._lines[line] = event_id
            self._ids.setdefault(event_id, []).append(line)

    def forget(self, line: int, event_id: str) -> None:
        with self._lock:
            self._lines.pop(line, None)
            lines = self._ids.get(event_id)
            if lines is not None and line in lines:
                lines.remove(line)
                if not lines:
                    del self._ids[event_id]

    def _settle(self, event_id: str) -> Optional[int]:
        lines = self._ids.get(event_id)
        if not lines:
            return None
        line = lines.pop(0)
        if not lines:
            del self._ids[event_id]
        del self._lines[line]
        self._room.notify()
        return line

    def on_success(self, event: CustomEvent) -> None:
        with self._lock:
            self._settle(event.event_id)
            self.delivered += 1

    def on_error(self, event: CustomEvent, error: DeliveryError) -> None:
        with self._lock:
            if self.interrupted and error.reason == SHUTDOWN:
                return
            if error.reason == UNAUTHORIZED and not self.delivered:
                self.key_refused = self.key_refused or error
                self.interrupted = True
                return
            lines = self._ids.get(event.event_id)
            record: dict[str, Any] = {"line": lines[0] if lines else None, "reason": error.reason}
            if error.status_code is not None:
                record["status"] = error.status_code
            if error.message:
                record["message"] = error.message
            record["event"] = event.to_dict()
            # Written before settled: if the write fails, the line stays pending and the
            # watermark never passes an event that is neither delivered nor on file.
            try:
                self.dead.write(record)
            except DeadLetterError as exc:
                self.write_error = self.write_error or str(exc)
                self.interrupted = True
                return
            self._settle(event.event_id)
            self.failed[error.reason] = self.failed.get(error.reason, 0) + 1

    def bad_line(self, line: int, error: BadLine) -> None:
        record: dict[str, Any] = {"line": line, "reason": error.reason}
        if error.event is not None:
            record["event"] = error.event
        else:
            record["raw"] = error.raw
        with self._lock:
            try:
                self.dead.write(record)
            except DeadLetterError as exc:
                self.write_error = self.write_error or str(exc)
                return
            self.bad += 1
            self._read_through = line

    def read(self, line: int) -> None:
        """Every line up to ``line`` was handed to the tracker or dead-lettered."""
        with self._lock:
            self._read_through = line

    def checkpoint(self) -> int:
        """The watermark, with every dead letter below it flushed to the file first."""
        with self._lock:
            self.dead.flush()
            for first in self._lines:
                return first - 1
            return self._read_through


class ResumeState:
    """The small JSON file that lets ``--resume`` skip settled lines."""

    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.source = source
        self._saved: Optional[int] = None

    def load(self) -> Optional[int]:
        """The watermark of an earlier run, None when there is no state file."""
        try:
            with open(self.path, encoding="utf-8") as file:
                data = json.load(file)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read resume state {self.path}: {exc}") from None
        watermark = data.get("watermark") if isinstance(data, dict) else None
        if isinstance(watermark, bool) or not isinstance(watermark, int) or watermark < 0:
            raise CliError(f"{self.path} is not a resume state of tracker send")
        self._saved = watermark
        return watermark

    def save(self, watermark: int, *, complete: bool = False, force: bool = False) -> None:
        if watermark == self._saved and not force:
            return
        data = {
            "input": self.source,
            "watermark": watermark,
            "complete": complete,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(data, file)
            file.write("\n")
        os.replace(temporary, self.path)  # a crash never leaves half a state file
        self._saved = watermark
