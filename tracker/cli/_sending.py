"""One ``tracker send`` run: read the input, track each line, wait for delivery, report."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Optional

from tracker._tracker import Tracker
from tracker.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    error,
    logger,
    on_stop_signals,
    progress_bar,
    reasons,
)
from tracker.cli._jsonl import BadLine, event_arguments, parse_line
from tracker.cli._ledger import Ledger, ResumeState
from tracker.errors import ValidationError

if TYPE_CHECKING:
    from tracker.testing import FakePX


class Interrupts:
    """SIGINT/SIGTERM as KeyboardInterrupt, but never inside ``track()``: an exception
    in the middle of it could leave the tracker's counters half-updated."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._critical = 0

    def handler(self, signum: int, frame: Optional[FrameType]) -> None:
        self.signal = signum
        if not self._critical:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if self.signal is not None and not self._critical:
            raise KeyboardInterrupt

    def installed(self) -> contextlib.AbstractContextManager[None]:
        return on_stop_signals(self.handler)


class SendRun:
    """One ``tracker send``: read, track, wait, report."""

    def __init__(
        self,
        args: argparse.Namespace,
        stream: IO[bytes],
        size: Optional[int],
        skip_through: int,
        ledger: Ledger,
        state: ResumeState,
        client: Tracker,
        target: str,
        local_px: Optional[FakePX],
    ) -> None:
        self.args = args
        self.stream = stream
        self.size = size
        self.skip_through = skip_through
        self.ledger = ledger
        self.state = state
        self.client = client
        self.target = target
        self.local_px = local_px
        self.interrupts = Interrupts()
        self.lines = 0
        self.skipped = 0
        self.tracked = 0
        self.bytes_read = 0
        self.read_error: Optional[str] = None
        self.began = time.monotonic()

    def run(self) -> int:
        by_bytes = self.size is not None
        bar = progress_bar(
            self.args.quiet,
            total=self.size,
            unit="B" if by_bytes else " lines",
            unit_scale=by_bytes,
            unit_divisor=1024,
            desc="sending",
        )
        done = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(bar, done), name="send-progress")
        ticker.daemon = True
        ledger = self.ledger
        interrupted = False
        with self.interrupts.installed():
            ticker.start()
            try:
                self._read_all()
                while not self.client.flush(timeout=0.2) and not ledger.halted:
                    pass
            except KeyboardInterrupt:
                interrupted = True
            finally:
                done.set()
                ticker.join()
                self._tick_once(bar)
                bar.close()
            if interrupted or ledger.halted:
                ledger.interrupted = True
                # A second Ctrl-C ends this grace period, not the bookkeeping after it.
                with contextlib.suppress(KeyboardInterrupt):
                    self.client.shutdown(timeout=0.5 if interrupted else 0)
            else:
                self.client.shutdown(timeout=0)
        watermark = ledger.checkpoint()
        complete = not (interrupted or ledger.halted or self.read_error)
        try:
            self.state.save(watermark, complete=complete, force=True)
        except OSError as exc:
            self.read_error = f"cannot write {self.state.path}: {exc.strerror or exc}"
        return self._report(watermark, self.interrupts.signal if interrupted else None)

    def _read_all(self) -> None:
        ledger = self.ledger
        limit = self.client.config.max_queue_size
        interrupts = self.interrupts
        line = 0
        try:
            for data in self.stream:
                line += 1
                self.bytes_read += len(data)
                if line <= self.skip_through:
                    self.skipped += 1
                elif not data.strip():
                    ledger.read(line)
                else:
                    # Our own wait for room (interruptible) keeps track() from blocking.
                    while not ledger.wait_for_room(limit, 0.2) and not ledger.halted:
                        pass
                    if ledger.halted:
                        return
                    with interrupts.critical():
                        self._one(line, data)
                self.lines = line
        except OSError as exc:
            self.read_error = f"reading stopped after line {self.lines}: {exc.strerror or exc}"

    def _one(self, line: int, data: bytes) -> None:
        ledger = self.ledger
        try:
            obj = parse_line(data)
        except BadLine as exc:
            ledger.bad_line(line, exc)
            return
        try:
            kwargs = event_arguments(obj)
        except ValidationError as exc:
            ledger.bad_line(line, BadLine(str(exc), event=obj))
            return
        event_id = kwargs.get("event_id")
        if not isinstance(event_id, str) or not event_id.strip():
            if "event_id" in kwargs:
                reason = f"event_id: must be a non-empty string (got {event_id!r})"
                ledger.bad_line(line, BadLine(reason, event=obj))
                return
            # Our id, not track()'s: the callback may fire before track() returns.
            event_id = kwargs["event_id"] = str(uuid.uuid4())
        ledger.add(line, event_id)
        try:
            self.client.track(kwargs.pop("identify_id"), kwargs.pop("event_name"), **kwargs)
        except ValidationError as exc:
            ledger.forget(line, event_id)
            ledger.bad_line(line, BadLine(str(exc), event=obj))
            return
        self.tracked += 1
        ledger.read(line)

    def _tick(self, bar: Any, done: threading.Event) -> None:
        last_save = time.monotonic()
        while not done.wait(0.25):
            self._tick_once(bar)
            if self.local_px is not None:
                self.local_px.clear()  # it keeps every request: memory must stay flat
            if time.monotonic() - last_save >= 1.0:
                last_save = time.monotonic()
                try:
                    self.state.save(self.ledger.checkpoint())
                except OSError as exc:
                    logger.error("cannot write %s: %s", self.state.path, exc)

    def _tick_once(self, bar: Any) -> None:
        ledger = self.ledger
        elapsed = max(1e-9, time.monotonic() - self.began)
        postfix = {
            "delivered": ledger.delivered,
            "failed": sum(ledger.failed.values()),
            "bad": ledger.bad,
            "events/s": f"{ledger.delivered / elapsed:.0f}",
        }
        bar.set_postfix(postfix, refresh=False)
        bar.update((self.lines if self.size is None else self.bytes_read) - bar.n)

    def _report(self, watermark: int, interrupted_by: Optional[int]) -> int:
        ledger = self.ledger
        stats = self.client.stats()
        failed = sum(ledger.failed.values())
        unsent = ledger.pending
        elapsed = time.monotonic() - self.began
        refused = ledger.key_refused
        if interrupted_by is not None:
            code = 128 + interrupted_by  # the shell's convention: 130 for Ctrl-C
        elif self.read_error or ledger.halted:
            code = EXIT_USAGE
        elif ledger.bad or failed:
            code = EXIT_FAILED
        else:
            code = EXIT_OK
        summary: dict[str, Any] = {
            "input": self.args.file,
            "target": self.target,
            "lines": self.lines,
            "skipped": self.skipped,
            "tracked": self.tracked,
            "delivered": ledger.delivered,
            "bad_lines": ledger.bad,
            "failed": failed,
            "failed_by_reason": dict(ledger.failed),
            "unsent": unsent,
            "retries": stats.retries,
            "rate_limited": stats.rate_limited,
            "dead_letter": ledger.dead.path if ledger.dead.written else None,
            "dead_letter_records": ledger.dead.written,
            "state": self.state.path,
            "watermark": watermark,
            "elapsed_s": round(elapsed, 3),
            "events_per_s": round(ledger.delivered / elapsed, 1) if elapsed > 0 else None,
            "interrupted": interrupted_by is not None,
            "exit_code": code,
        }
        if self.args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(_text(summary))
        resume = f"run again with --resume to go on after line {watermark}"
        for problem in (self.read_error, ledger.write_error):
            if problem:
                error("send", f"{problem}; {resume}")
        if refused is not None:
            answer = f"HTTP {refused.status_code}" if refused.status_code else "no answer"
            if refused.message:
                answer += f": {refused.message}"
            error(
                "send",
                f"PX refused the API key ({answer}) before accepting any event; "
                f"{unsent} event(s) not sent. Check the key, then {resume}",
            )
        if interrupted_by is not None:
            print(
                f"tracker send: interrupted; {unsent} event(s) not sent; {resume}", file=sys.stderr
            )
        return code


def _text(s: dict[str, Any]) -> str:
    skipped = f" ({s['skipped']} skipped: settled by an earlier run)" if s["skipped"] else ""
    lines = [
        f"tracker send: {s['input']} -> {s['target']}",
        f"  lines read   {s['lines']:>8}{skipped}",
        f"  delivered    {s['delivered']:>8}",
        f"  bad lines    {s['bad_lines']:>8}",
        f"  failed       {s['failed']:>8}" + reasons(s["failed_by_reason"]),
    ]
    if s["unsent"]:
        lines.append(f"  not sent     {s['unsent']:>8}   (run again with --resume)")
    lines.append(f"  retries      {s['retries']:>8}   ({s['rate_limited']} 429s seen)")
    if s["dead_letter"]:
        lines.append(f"  dead letter  {s['dead_letter']} ({s['dead_letter_records']} records)")
    lines.append(f"  took         {s['elapsed_s']:.1f} s, {s['events_per_s'] or 0:.0f} events/s")
    return "\n".join(lines)
