"""Sending: one delivery attempt and its consequences, and the threads that run them."""

from __future__ import annotations

import itertools
import logging
import math
import threading
import traceback
from typing import Callable, Optional

from tracker import _green
from tracker._buffer import Buffer
from tracker._callbacks import Outcomes, mark_sender_thread
from tracker._clock import Deadline
from tracker._config import Config
from tracker._counters import REJECTED, RETRIES_EXHAUSTED, UNAUTHORIZED
from tracker._jobs import Job
from tracker._retry import Kind, RetryPolicy
from tracker._telemetry import RATE_LIMITED, RETRYABLE
from tracker._transport import Transport

logger = logging.getLogger("tracker")

_FAILED = {Kind.UNAUTHORIZED: UNAUTHORIZED, Kind.REJECTED: REJECTED}
# What a non-2xx attempt is recorded as in stats().last_errors.
_ERRORS = {**_FAILED, Kind.RETRY: RETRYABLE, Kind.RATE_LIMITED: RATE_LIMITED}
#: A 429 pause at least this long (seconds) is worth a warning: delivery stops meanwhile.
LONG_PAUSE = 10.0


def retry_policy(config: Config) -> RetryPolicy:
    unlimited = config.retries_unlimited  # a spool keeps them on disk meanwhile
    return RetryPolicy(
        max_retries=None if unlimited else config.max_retries,
        max_retry_time=math.inf if unlimited else config.max_retry_time,
        backoff_base=config.backoff_base,
        backoff_max=config.backoff_max,
        max_retry_after=config.max_retry_after,
        default_retry_after=config.default_retry_after,
    )


class Sender:
    """One delivery attempt and its bookkeeping; shared by worker threads, sync mode and a
    caller draining the queue itself (at exit, or flush() from a callback)."""

    def __init__(
        self, config: Config, buffer: Buffer, transport: Transport, outcomes: Outcomes
    ) -> None:
        self._buffer = buffer
        self._transport = transport
        self._outcomes = outcomes
        self._policy = retry_policy(config)
        self._clock = config.clock
        self._secret = config.api_key
        # Set by the worker pool: start one more sender (the round trip calls for it).
        self.grow: Callable[[], object] = lambda: None
        # Set by the pipeline: the pacer's written(sent_at, at), told when a request left.
        self.written: Callable[[float, float], None] = lambda sent_at, at: None

    def attempt(self, job: Job) -> Optional[float]:
        """Send once. Returns the delay before the next attempt, or None when the job is
        settled (delivered, failed) or was abandoned by a shutdown meanwhile."""
        buffer = self._buffer
        if not buffer.await_turn(job):
            return None
        if not job.attempts:
            job.first_attempt = job.sent_at
        job.attempts += 1
        sent_at, written, now = job.sent_at, self.written, self._clock.monotonic
        result = self._transport.send(job.event, lambda: written(sent_at, now()))
        kind = result.kind
        if kind is Kind.DELIVERED:
            if buffer.answered(job, None):
                self.grow()
            outcomes = self._outcomes
            receipt = buffer.settle(job, receipt=outcomes.reports_success)
            if receipt is not None:
                outcomes.delivered(job, receipt)
            return None
        job.last_status = result.status_code
        job.last_message = result.message
        buffer.attempted(job, _ERRORS[kind], result.status_code, result.message)
        pause: Optional[float] = None
        if kind is Kind.RATE_LIMITED:
            pause = self._policy.pause(result.retry_after)
            if pause >= LONG_PAUSE:
                self._outcomes.warnings.warn(
                    "long_pause",
                    "PX answered 429: every sender pauses for %.0fs, events queue up "
                    "meanwhile (see stats().rate_limited)",
                    pause,
                )
            else:
                logger.info("PX answered 429: every sender pauses for %.2fs", pause)
        if result.status_code is not None and buffer.answered(job, pause):
            self.grow()
        failed = _FAILED.get(kind)
        if failed is not None:
            self.fail(job, failed)
            return None
        decision = self._policy.decide(
            kind,
            failures=job.failures,
            first_attempt=job.first_attempt,
            now=self._clock.monotonic(),
            pause=pause or 0.0,
        )
        job.failures = decision.failures
        if decision.delay is None:
            self.fail(job, RETRIES_EXHAUSTED)
            return None
        logger.debug(
            "event %s: %s; attempt %d in %.2fs",
            job.event.event_id,
            result.message or f"HTTP {result.status_code}",
            job.attempts + 1,
            decision.delay,
        )
        return decision.delay

    def fail(self, job: Job, reason: str) -> None:
        receipt = self._buffer.settle(job, reason)
        if receipt is not None:
            self._outcomes.failed(job, reason, receipt)

    def _attempt_guarded(self, job: Job) -> Optional[float]:
        """``attempt``, where a bug of ours costs one event (reported), never the thread."""
        try:
            return self.attempt(job)
        except Exception as exc:
            # Our bug, but the traceback may quote server bytes: keep the key out of it.
            text = traceback.format_exc().replace(self._secret, "***")
            logger.error("unexpected error sending event %s:\n%s", job.event.event_id, text)
            job.last_message = f"internal error: {type(exc).__name__}"
            self.fail(job, REJECTED)
            return None

    def run(self, job: Job) -> None:
        """Attempt ``job``; a retry goes back to the buffer's heap, so it stalls nobody."""
        delay = self._attempt_guarded(job)
        if delay is not None:
            self._buffer.reschedule(job, delay)

    def run_inline(self, job: Job) -> None:
        """Attempt ``job`` until settled, waiting out its retries on this thread."""
        while True:
            delay = self._attempt_guarded(job)
            if delay is None or not self._buffer.hold(job, delay):
                return

    def drain(self, mark: int, deadline: Optional[Deadline]) -> bool:
        """Send from this thread until everything admitted before ``mark`` is settled, or
        the deadline passed (the request under way then finishes first)."""
        buffer = self._buffer
        while True:
            job = buffer.take_to_drain(mark, deadline)
            if job is None:
                return buffer.settled_below(mark)
            self.run(job)
            if deadline is not None and deadline.expired():
                # A backlog would otherwise keep this thread sending, one request after
                # another, past the deadline (take_to_drain hands out what is ready).
                return buffer.settled_below(mark)


_pool_local = _green.ThreadLocal()  # .pool: the WorkerPool whose sender thread this is


class WorkerPool:
    """Named daemon threads taking jobs from the buffer: one to begin with, more while
    work waits and the pacer's concurrency allows (up to ``cap``); a surplus one ends
    after its job, and an idle one waits without polling."""

    def __init__(self, buffer: Buffer, sender: Sender, cap: int) -> None:
        self._buffer = buffer
        self._sender = sender
        self._cap = cap
        self._threads: list[threading.Thread] = []
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        sender.grow = self.grow

    def start(self) -> bool:
        """Start the first thread; False when Python refuses (it does during shutdown)."""
        if self.alive():
            return True
        return self.grow(warn=True)

    def grow(self, *, warn: bool = False) -> bool:
        """One more thread, unless ``cap`` are running."""
        if not self._buffer.add_thread(self._cap):
            return True
        thread = threading.Thread(
            target=self._run, name=f"px-tracker-{next(self._names)}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:
            self._buffer.thread_failed()
            log = logger.warning if warn else logger.debug
            log(
                "could not start a sender thread (%s); the queue will be sent by "
                "flush()/shutdown() on the calling thread",
                exc,
            )
            return False
        dead = {t for t in self._snapshot() if not t.is_alive()}
        with self._lock:
            self._threads = [t for t in self._threads if t not in dead]
            self._threads.append(thread)
        return True

    def _snapshot(self) -> list[threading.Thread]:
        # Threads are asked is_alive() outside the lock: under gevent that takes a lock of
        # the thread's and may switch greenlets, and a greenlet switching away while it
        # holds a lock made before patching (a native one) blocks the hub for good.
        with self._lock:
            return list(self._threads)

    def _run(self) -> None:
        mark_sender_thread()
        _pool_local.get().pool = self
        take, run = self._buffer.take, self._sender.run
        job: Optional[Job] = None
        while True:
            job, grow = take(job)
            if job is None:
                return
            if grow:
                self.grow()
            run(job)

    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._snapshot())

    def count(self) -> int:
        return sum(1 for thread in self._snapshot() if thread.is_alive())

    def owns_current_thread(self) -> bool:
        return getattr(_pool_local.get(), "pool", None) is self

    def not_on_worker_thread(self) -> bool:
        return getattr(_pool_local.get(), "pool", None) is not self

    def join(self, deadline: Deadline) -> bool:
        """Wait until ``deadline`` (real time) for the threads to end (but the caller's,
        when it is one of them); True when all have. A thread stuck in a request is left
        to die with the process."""
        return self._buffer.wait_threads_ended(deadline, own=self.owns_current_thread())
