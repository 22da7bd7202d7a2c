"""The one outcome path: what an event came to, told to the log and to the user's callbacks.

Every ``DeliveryError`` is built here and every ``on_success``/``on_error`` call goes
through ``Outcomes``, guarded:

- an ``Exception`` in a callback is logged and ignored;
- a ``BaseException`` (``SystemExit`` from ``sys.exit()``, ``KeyboardInterrupt``) is
  contained on the tracker's own sender threads, where it could only kill the thread and
  strand the events it holds (logged as an error, ignored); on the caller's own thread
  (sync mode, an overflow drop in ``track()``, ``shutdown()``, a ``flush()`` that sends)
  it propagates to the caller once every event of the batch is settled and told;
- a callback reached from a ``flush()`` inside another callback on the same thread runs
  after that callback returned, never nested inside it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any, Callable, Optional

from tracker import _green
from tracker._clock import SYSTEM_CLOCK, Clock
from tracker._config import Config
from tracker._counters import UNAUTHORIZED
from tracker._event import CustomEvent
from tracker._jobs import Job, Receipt
from tracker.errors import DeliveryError

logger = logging.getLogger("tracker")

# A callback that tracks an event that overflows calls on_error again, which may track...
# Past this depth on one thread a callback is skipped (and logged) instead of recursing.
MAX_CALLBACK_DEPTH = 8
WARN_EVERY = 60.0  # seconds between two warnings for the same reason

_local = _green.ThreadLocal()


def mark_sender_thread() -> None:
    """Called by each sender thread of ours when it starts."""
    _local.get().sender = True


class Warnings:
    """Warnings an operator can act on, at most one per reason per minute (on the
    tracker's clock); the ones in between go to DEBUG and are counted in the next one."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def warn(self, reason: str, message: str, *args: object) -> None:
        now = self._clock.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < WARN_EVERY:
                self._quiet[reason] = self._quiet.get(reason, 0) + 1
                quiet = -1
            else:
                self._last[reason] = now
                quiet = self._quiet.pop(reason, 0)
        if quiet < 0:
            logger.debug(message, *args)
        elif quiet:
            logger.warning(message + " (and %d more like it in the last minute)", *args, quiet)
        else:
            logger.warning(message, *args)


class Outcomes:
    """Tells what became of events: logs, DeliveryError, callbacks."""

    def __init__(self, config: Config, warnings: Warnings) -> None:
        self._on_success = config.on_success
        self._on_error = config.on_error
        self.warnings = warnings

    @property
    def reports_errors(self) -> bool:
        return self._on_error is not None

    @property
    def reports_success(self) -> bool:
        return self._on_success is not None

    def delivered(self, job: Job, receipt: Receipt) -> None:
        on_success = self._on_success
        if on_success is None:
            receipt.release()
        else:
            self._deliver("on_success", on_success, (job.event,), receipt)

    def failed(self, job: Job, reason: str, receipt: Receipt) -> None:
        error = DeliveryError(
            reason,
            job.event.event_id,
            status_code=job.last_status,
            message=job.last_message,
            attempts=job.attempts,
        )
        if reason == UNAUTHORIZED:
            self.warnings.warn(
                reason, "%s: PX refused the API key (check api_key / PX_API_KEY)", error
            )
        else:
            self.warnings.warn(reason, "%s", error)
        on_error = self._on_error
        if on_error is None:
            receipt.release()
        else:
            self._deliver("on_error", on_error, (job.event, error), receipt)

    def dropped(self, events: Iterable[CustomEvent], reason: str) -> None:
        """Events dropped on this (the caller's) thread: overflow or shutdown."""
        on_error = self._on_error
        if on_error is None:
            return
        raised: Optional[BaseException] = None
        for event in events:
            caught = _call("on_error", on_error, (event, DeliveryError(reason, event.event_id)))
            raised = raised or caught
        if raised is not None:
            raise raised

    def _deliver(
        self, name: str, callback: Callable[..., object], args: tuple[Any, ...], receipt: Receipt
    ) -> None:
        """Run a delivery callback, then release its receipt. Inside another delivery
        callback on this thread (whose flush() sends from here), run it once that
        callback returned."""
        local = _local.get()
        pending: Optional[deque[Any]] = getattr(local, "deferred", None)
        if pending is not None:
            pending.append((name, callback, args, receipt))
            return
        local.deferred = pending = deque([(name, callback, args, receipt)])
        raised: Optional[BaseException] = None
        try:
            while pending:
                name_, callback_, args_, receipt_ = pending.popleft()
                try:
                    caught = _call(name_, callback_, args_)
                finally:
                    receipt_.release()
                raised = raised or caught
        finally:
            local.deferred = None
        if raised is not None:
            raise raised


def _call(
    name: str, callback: Callable[..., object], args: tuple[Any, ...]
) -> Optional[BaseException]:
    """Run a user callback. Returns the BaseException to re-raise on the caller's thread
    (None otherwise): see the module docstring."""
    local = _local.get()
    depth: int = getattr(local, "depth", 0)
    if depth >= MAX_CALLBACK_DEPTH:
        logger.warning("%s not called: callbacks nested %d deep on this thread", name, depth)
        return None
    local.depth = depth + 1
    try:
        callback(*args)
    except Exception:
        logger.exception("%s callback raised; the exception was ignored", name)
    except BaseException as exc:
        if getattr(local, "sender", False):
            logger.error(
                "%s callback raised %s on a sender thread; ignored: a callback cannot stop "
                "the process from there (the sender goes on)",
                name,
                type(exc).__name__,
            )
        else:
            return exc
    finally:
        local.depth = depth
    return None
