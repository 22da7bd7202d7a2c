"""Sending: the retry policy, one delivery attempt, and the daemon threads that run them."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

import attrs
import backoff

from tracker._buffer import Buffer, Job
from tracker._config import Config
from tracker._counters import REJECTED, RETRIES_EXHAUSTED, UNAUTHORIZED
from tracker._transport import Kind, Transport
from tracker.errors import DeliveryError

logger = logging.getLogger("tracker")

# A callback that tracks an event that overflows calls on_error again, which may track...
# Past this depth on one thread a callback is skipped (and logged) instead of recursing.
MAX_CALLBACK_DEPTH = 8

_local = threading.local()


def call_guarded(name: str, callback: Callable[..., object], *args: Any) -> None:
    """Run a user callback; an exception in it is logged and swallowed."""
    depth: int = getattr(_local, "depth", 0)
    if depth >= MAX_CALLBACK_DEPTH:
        logger.warning("%s not called: callbacks nested %d deep on this thread", name, depth)
        return
    _local.depth = depth + 1
    try:
        callback(*args)
    except Exception:
        logger.exception("%s callback raised; the exception was ignored", name)
    finally:
        _local.depth = depth


def report(
    name: str, callback: Callable[..., object], args: tuple[Any, ...], done: Callable[[], None]
) -> None:
    """Run a delivery callback, then ``done()``. Inside another delivery callback on this
    thread (whose flush() drains the queue here), run it once that callback returned."""
    pending: Optional[deque[Any]] = getattr(_local, "deferred", None)
    if pending is not None:
        pending.append((name, callback, args, done))
        return
    _local.deferred = pending = deque([(name, callback, args, done)])
    try:
        while pending:
            name_, callback_, args_, done_ = pending.popleft()
            try:
                call_guarded(name_, callback_, *args_)
            finally:
                done_()
    finally:
        _local.deferred = None


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When to try an event again, as a value (compare urllib3's Retry).

    Retryable failures (408, 5xx but 501/505, connection errors, timeouts) wait a fully
    jittered exponential backoff (``backoff.expo`` + ``backoff.full_jitter``) and count
    against ``max_retries``. A 429 waits for its Retry-After (capped at
    ``max_retry_after``; ``default_retry_after`` when absent) and does not use up
    ``max_retries``: the server told us when to come back. Nothing is retried once the
    next attempt would start more than ``max_retry_time`` after the first.
    """

    max_retries: int
    max_retry_time: float
    backoff_base: float
    backoff_max: float
    max_retry_after: float
    default_retry_after: float
    # The un-jittered waits before retry 1, 2, ... max_retries: backoff's expo schedule,
    # computed once rather than kept as a generator in every retrying event.
    waits: tuple[float, ...] = attrs.field(init=False)

    @waits.default
    def _schedule(self) -> tuple[float, ...]:
        expo = backoff.expo(base=2, factor=self.backoff_base, max_value=self.backoff_max)
        next(expo)  # backoff's generators are primed with a first, empty next()
        return tuple(itertools.islice(expo, self.max_retries))

    @classmethod
    def from_config(cls, config: Config) -> RetryPolicy:
        return cls(
            max_retries=config.max_retries,
            max_retry_time=config.max_retry_time,
            backoff_base=config.backoff_base,
            backoff_max=config.backoff_max,
            max_retry_after=config.max_retry_after,
            default_retry_after=config.default_retry_after,
        )

    def pause(self, retry_after: Optional[float]) -> float:
        """How long every sender waits after a 429."""
        if retry_after is None:
            return self.default_retry_after
        return min(retry_after, self.max_retry_after)

    def backoff(self, failures: int) -> float:
        """The fully jittered wait before the retry after ``failures`` failures (>= 1)."""
        return backoff.full_jitter(self.waits[failures - 1])

    def next_delay(self, job: Job, kind: Kind, pause: float, now: float) -> Optional[float]:
        """Seconds until the job's next attempt, or None when it must not be retried."""
        if kind is Kind.RATE_LIMITED:
            delay = pause
        else:
            job.failures += 1
            if job.failures > self.max_retries:
                return None
            delay = self.backoff(job.failures)
        if now + delay - job.first_attempt > self.max_retry_time:
            return None
        return delay


class Sender:
    """One delivery attempt and its bookkeeping; shared by worker threads, sync mode and a
    caller draining the queue itself (at exit, or flush() from a callback)."""

    def __init__(self, config: Config, buffer: Buffer, transport: Transport) -> None:
        self._buffer = buffer
        self._transport = transport
        self._policy = RetryPolicy.from_config(config)
        self._clock = config.clock
        self._on_success = config.on_success
        self._on_error = config.on_error

    def attempt(self, job: Job) -> Optional[float]:
        """Send once. Returns the delay before the next attempt, or None when the job is
        settled (delivered, failed) or was abandoned by a shutdown meanwhile."""
        buffer = self._buffer
        if not buffer.await_turn(job):
            return None
        clock = self._clock
        if not job.attempts:
            job.first_attempt = clock.monotonic()
        job.attempts += 1
        result = self._transport.send(job.event)
        kind = result.kind
        if kind is Kind.DELIVERED:
            on_success = self._on_success
            if on_success is None:
                buffer.settle(job)
            elif buffer.settle(job, report=True):
                report("on_success", on_success, (job.event,), lambda: buffer.reported(job))
            return None
        job.last_status = result.status_code
        job.last_message = result.message
        now = clock.monotonic()
        if kind is Kind.RETRY or kind is Kind.RATE_LIMITED:
            pause = 0.0
            if kind is Kind.RATE_LIMITED:
                pause = self._policy.pause(result.retry_after)
                buffer.pause(now + pause)
                logger.info("PX answered 429: every sender pauses for %.2fs", pause)
            delay = self._policy.next_delay(job, kind, pause, now)
            if delay is not None:
                logger.debug(
                    "event %s: %s; attempt %d in %.2fs",
                    job.event.event_id,
                    result.message or f"HTTP {result.status_code}",
                    job.attempts + 1,
                    delay,
                )
                return delay
            self.fail(job, RETRIES_EXHAUSTED)
        elif kind is Kind.UNAUTHORIZED:
            self.fail(job, UNAUTHORIZED)
        else:
            self.fail(job, REJECTED)
        return None

    def fail(self, job: Job, reason: str) -> None:
        on_error = self._on_error
        if not self._buffer.settle(job, failed_reason=reason, report=on_error is not None):
            return
        error = DeliveryError(
            reason,
            job.event.event_id,
            status_code=job.last_status,
            message=job.last_message,
            attempts=job.attempts,
        )
        logger.warning("%s", error)
        if on_error is not None:
            buffer = self._buffer
            report("on_error", on_error, (job.event, error), lambda: buffer.reported(job))

    def _attempt_guarded(self, job: Job) -> Optional[float]:
        """``attempt``, where a bug of ours costs one event (reported), never the thread."""
        try:
            return self.attempt(job)
        except Exception as exc:
            logger.exception("unexpected error sending event %s", job.event.event_id)
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

    def drain(self, mark: int, deadline: Optional[float]) -> bool:
        """Send from this thread until everything admitted before ``mark`` is settled."""
        buffer = self._buffer
        while True:
            job = buffer.take(deadline, mark=mark)
            if job is None:
                return buffer.settled_below(mark)
            self.run(job)


class WorkerPool:
    """Named daemon threads taking jobs from the buffer until it stops them."""

    def __init__(self, buffer: Buffer, sender: Sender, count: int) -> None:
        self._buffer = buffer
        self._sender = sender
        self._count = count
        self._threads: list[threading.Thread] = []

    def start(self) -> bool:
        """Start the threads; False when Python refuses (it does during shutdown)."""
        try:
            for _ in range(self._count - len(self._threads)):
                thread = threading.Thread(
                    target=self._run, name=f"px-tracker-{len(self._threads) + 1}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        except RuntimeError as exc:
            logger.warning(
                "could not start sender threads (%s); the queue will be sent "
                "by flush()/shutdown() on the calling thread",
                exc,
            )
            return False
        return True

    def _run(self) -> None:
        _local.pool = self
        take, run = self._buffer.take, self._sender.run
        while True:
            job = take(None)
            if job is None:
                return
            run(job)

    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def owns_current_thread(self) -> bool:
        return getattr(_local, "pool", None) is self

    def not_on_worker_thread(self) -> bool:
        return getattr(_local, "pool", None) is not self

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds (real time) for the threads to end; True when
        all have. A thread stuck in a request is left to die with the process."""
        current = threading.current_thread()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads if t is not current)
