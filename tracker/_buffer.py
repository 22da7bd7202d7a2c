"""The bounded buffer of accepted, unsettled events, with the counters and pacing it guards.

One lock covers the queue, the retry heap, the in-flight set, the counters and the
pacing state, so ``tracked == delivered + failed + dropped + pending`` holds at every
moment a reader can observe, and an event changes state in exactly one place.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from typing import Callable, Optional

import attrs

from tracker._config import Config, OverflowPolicy
from tracker._counters import DRY_RUN, QUEUE_OVERFLOW, SHUTDOWN, Counters, Stats
from tracker._event import CustomEvent
from tracker.errors import QueueFullError

BURST_SECONDS = 0.1  # client pacing: the largest burst, in seconds' worth of rate_limit


class Job:
    """An event taken out of the queue for delivery, and its retry state."""

    __slots__ = (
        "attempts",
        "event",
        "failures",
        "first_attempt",
        "last_message",
        "last_status",
        "send_at",
        "seq",
    )

    def __init__(self, event: CustomEvent, seq: int) -> None:
        self.event = event
        self.seq = seq  # admission order; flush() waits for everything below its mark
        self.attempts = 0  # requests sent, the first included
        self.failures = 0  # retryable failures other than 429s: what max_retries bounds
        self.first_attempt = 0.0
        self.send_at = 0.0  # the pacing slot reserved for the next attempt
        self.last_status: Optional[int] = None
        self.last_message: Optional[str] = None


@attrs.frozen
class Dropped:
    """An event that admission dropped (the new one, or with drop_oldest the oldest one)."""

    event: CustomEvent
    reason: str


class Buffer:
    """Queue (FIFO), retry heap and in-flight set, bounded together by ``max_queue_size``."""

    def __init__(self, config: Config) -> None:
        self._clock = config.clock
        self._max = config.max_queue_size
        self._overflow = config.overflow
        self._block_timeout = config.block_timeout
        self._lock = threading.Lock()
        self._jobs = threading.Condition(self._lock)  # idle workers: work arrived, or stop
        self._timer = threading.Condition(self._lock)  # senders waiting for a slot or a pause
        self._room = threading.Condition(self._lock)  # producers blocked on a full queue
        self._settled = threading.Condition(self._lock)  # flush() callers
        self._ready: deque[CustomEvent] = deque()
        self._delayed: list[tuple[float, int, Job]] = []  # (due, tiebreak, job), a heap
        self._in_flight: set[Job] = set()
        # Settled jobs whose callback is still running, and on which thread: flush() waits
        # for those too, except on that very thread (a callback may call flush()).
        self._reporting: dict[Job, int] = {}
        self._appended = 0  # events ever admitted: the seq of the next one
        self._taken = 0  # events ever removed from the front of _ready
        self._tiebreak = itertools.count()
        self._counters = Counters()
        self._idle = 0
        self._blocked = 0
        self._flush_marks: list[int] = []  # of every flush() waiting, drainers included
        self._draining = 0  # flush() callers sending on their own thread
        self._accepting = True
        self._stopping = False
        # Set by the Tracker: False on a thread that must never wait for room (a worker
        # running a callback would wait for itself).
        self.may_block: Callable[[], bool] = lambda: True
        # Client-side pacing as a GCRA (virtual scheduling): a sustained rate with bursts
        # of a tenth of a second's worth. Small bursts spread the sending evenly: a spike
        # of track() calls does not bring a spike of HTTP work competing with the app for
        # the GIL right when it is busiest. They also leave most of a server's one-second
        # burst allowance as slack for the gap between when we send and when it sees the
        # request (a request opening a connection arrives later than the ones after it),
        # which would otherwise cost 429s when both enforce the same rate. Each attempt
        # reserves its slot; nobody polls a bucket.
        rate = config.rate_limit
        self._interval = 0.0 if rate is None else 1.0 / rate
        burst = 1.0 if rate is None else max(1.0, BURST_SECONDS * rate)
        self._tolerance = (burst - 1.0) * self._interval
        self._tat = 0.0
        self._paused_until = 0.0

    # -- admission (caller's thread) -------------------------------------------------------

    def admit(self, event: CustomEvent) -> Optional[Dropped]:
        """Queue ``event``. None when it simply went in (the fast path); else what was
        dropped to make room, or the event itself when it was refused."""
        with self._lock:
            self._counters.tracked += 1
            if self._accepting and self._pending() < self._max:
                self._append(event)
                return None
            admitted, dropped = self._make_room(event)
            if admitted:
                self._append(event)
            return dropped

    def admit_inline(self, event: CustomEvent) -> tuple[Optional[Job], Optional[Dropped]]:
        """Admit ``event`` straight into flight, for a caller that sends it itself.

        Returns its job (None when refused) and what was dropped, if anything.
        """
        with self._lock:
            self._counters.tracked += 1
            if self._accepting and self._pending() < self._max:
                return self._start_inline(event), None
            admitted, dropped = self._make_room(event)
            return (self._start_inline(event) if admitted else None), dropped

    def record_dry_run(self) -> None:
        with self._lock:
            self._counters.tracked += 1
            self._counters.dropped[DRY_RUN] += 1

    def _pending(self) -> int:
        return len(self._ready) + len(self._delayed) + len(self._in_flight)

    def _append(self, event: CustomEvent) -> None:
        self._ready.append(event)
        self._appended += 1
        if self._idle:
            self._jobs.notify()
        if self._draining:
            self._settled.notify_all()  # a caller draining inline has work now

    def _start_inline(self, event: CustomEvent) -> Job:
        job = Job(event, self._appended)
        self._appended += 1
        self._taken += 1
        self._in_flight.add(job)
        self._reserve_slot(job)
        return job

    def _make_room(self, event: CustomEvent) -> tuple[bool, Optional[Dropped]]:
        """The slow path of admission, lock held: shut down, or full.

        Returns whether the new event may go in, and what was dropped.
        """
        counters = self._counters
        if not self._accepting:
            counters.dropped[SHUTDOWN] += 1
            return False, Dropped(event, SHUTDOWN)
        policy = self._overflow
        if policy is OverflowPolicy.BLOCK and not self.may_block():
            counters.dropped[QUEUE_OVERFLOW] += 1
            raise QueueFullError(
                f"queue full: {self._max} events pending, and a sender thread cannot wait "
                f"for room it would have to make itself (overflow='block')"
            )
        if policy is OverflowPolicy.BLOCK:
            clock = self._clock
            timeout = self._block_timeout
            deadline = None if timeout is None else clock.monotonic() + timeout
            try:
                while self._accepting and self._pending() >= self._max:
                    left = None if deadline is None else deadline - clock.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._blocked += 1
                    try:
                        clock.wait(self._room, left)
                    finally:
                        self._blocked -= 1
            except BaseException:
                # Interrupted while waiting (KeyboardInterrupt, say): the event was counted
                # as tracked, so it must end somewhere.
                counters.dropped[QUEUE_OVERFLOW] += 1
                raise
            if not self._accepting:
                counters.dropped[SHUTDOWN] += 1
                return False, Dropped(event, SHUTDOWN)
            if self._pending() < self._max:
                return True, None
            counters.dropped[QUEUE_OVERFLOW] += 1
            raise QueueFullError(
                f"queue full: {self._max} events pending and no room within {timeout}s "
                f"(overflow='block', max_queue_size={self._max})"
            )
        if policy is OverflowPolicy.RAISE:
            counters.dropped[QUEUE_OVERFLOW] += 1
            raise QueueFullError(
                f"queue full: {self._max} events pending "
                f"(overflow='raise', max_queue_size={self._max})"
            )
        counters.dropped[QUEUE_OVERFLOW] += 1
        if policy is OverflowPolicy.DROP_OLDEST:
            victim: Optional[CustomEvent] = None
            if self._ready:
                victim = self._ready.popleft()
                self._taken += 1
            elif self._delayed:
                victim = heapq.heappop(self._delayed)[2].event
            if victim is not None:
                self._after_settle()
                return True, Dropped(victim, QUEUE_OVERFLOW)
        # drop_newest, or drop_oldest with every pending event already in flight.
        return False, Dropped(event, QUEUE_OVERFLOW)

    # -- delivery (worker threads, or a caller draining inline) ----------------------------

    def take(self, deadline: Optional[float], mark: Optional[int] = None) -> Optional[Job]:
        """The next job to send, waiting for one until ``deadline`` (None: until stopped).

        Due retries go before fresh events; the job's pacing slot is reserved here. With a
        flush ``mark`` (a caller draining on its own thread), it also returns None as soon
        as everything admitted before the mark is settled, by whichever thread.
        """
        clock = self._clock
        me = threading.get_ident()
        with self._lock:
            while not self._stopping:
                if mark is not None and self._settled_below(mark, me):
                    return None
                now = clock.monotonic()
                delayed = self._delayed
                job: Optional[Job] = None
                if delayed and delayed[0][0] <= now:
                    job = heapq.heappop(delayed)[2]
                elif self._ready:
                    job = Job(self._ready.popleft(), self._taken)
                    self._taken += 1
                if job is not None:
                    self._in_flight.add(job)
                    self._reserve_slot(job)
                    return job
                timeout = delayed[0][0] - now if delayed else None
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return None
                    timeout = left if timeout is None else min(timeout, left)
                if mark is None:
                    self._idle += 1
                    try:
                        clock.wait(self._jobs, timeout)
                    finally:
                        self._idle -= 1
                else:
                    self._draining += 1
                    self._flush_marks.append(mark)
                    try:
                        clock.wait(self._settled, timeout)
                    finally:
                        self._draining -= 1
                        self._flush_marks.remove(mark)
            return None

    def _reserve_slot(self, job: Job) -> None:
        if not self._interval:
            job.send_at = 0.0
            return
        now = self._clock.monotonic()
        tat = max(self._tat, now)
        job.send_at = max(now, tat - self._tolerance)
        self._tat = tat + self._interval

    def await_turn(self, job: Job) -> bool:
        """Wait for the job's pacing slot and for any 429 pause to end.

        False when the job was abandoned meanwhile (shutdown): do not send it.
        """
        clock = self._clock
        now = clock.monotonic()
        if job.send_at <= now and self._paused_until <= now:
            return True  # the common case, no lock needed: both only move forward
        with self._lock:
            while job in self._in_flight:
                now = clock.monotonic()
                until = max(job.send_at, self._paused_until)
                if now >= until:
                    return True
                clock.wait(self._timer, until - now)
            return False

    def hold(self, job: Job, delay: float) -> bool:
        """Keep an in-flight job for ``delay`` seconds before its retry (inline senders).

        False when it was abandoned meanwhile.
        """
        clock = self._clock
        with self._lock:
            if job not in self._in_flight:
                return False
            self._counters.retries += 1
            until = clock.monotonic() + delay
            while job in self._in_flight:
                now = clock.monotonic()
                if now >= until:
                    self._reserve_slot(job)
                    return True
                clock.wait(self._timer, until - now)
            return False

    def reschedule(self, job: Job, delay: float) -> bool:
        """Move an in-flight job to the retry heap, due in ``delay`` seconds."""
        with self._lock:
            if job not in self._in_flight:
                return False
            self._in_flight.remove(job)
            due = self._clock.monotonic() + delay
            heapq.heappush(self._delayed, (due, next(self._tiebreak), job))
            self._counters.retries += 1
            if self._idle:
                # An idle worker may be waiting with no timeout: have it look at the heap.
                self._jobs.notify()
            if self._draining:
                self._settled.notify_all()
            return True

    def pause(self, until: float) -> None:
        """A 429: no sender of this buffer starts a request before ``until``."""
        with self._lock:
            self._counters.rate_limited += 1
            self._paused_until = max(self._paused_until, until)

    def settle(
        self, job: Job, *, failed_reason: Optional[str] = None, report: bool = False
    ) -> bool:
        """The job's final outcome: delivered, or failed for ``failed_reason``.

        False when the job had already been abandoned (then it is not counted again).
        With ``report``, flush() keeps waiting for the job until ``reported(job)``: the
        caller runs its callback in between.
        """
        with self._lock:
            if job not in self._in_flight:
                return False
            self._in_flight.remove(job)
            if failed_reason is None:
                self._counters.delivered += 1
            else:
                self._counters.failed[failed_reason] += 1
            if report:
                self._reporting[job] = threading.get_ident()
            self._after_settle()
            return True

    def reported(self, job: Job) -> None:
        """The callback for a settled job has returned."""
        with self._lock:
            del self._reporting[job]
            if self._flush_marks:
                self._settled.notify_all()

    def _after_settle(self) -> None:
        if self._blocked:
            self._room.notify()
        # Wake flush() only when it may be done: with every event below its mark settled,
        # at most the events from the mark on can still be pending. (Waking it on every
        # settled event cost a tenth of the delivery rate while a batch job flushed.)
        marks = self._flush_marks
        if marks and self._pending() <= self._appended - min(marks):
            self._settled.notify_all()

    # -- flush, shutdown -------------------------------------------------------------------

    def mark(self) -> int:
        """A flush mark: everything admitted so far has a seq below it."""
        with self._lock:
            return self._appended

    def settled_below(self, mark: int) -> bool:
        with self._lock:
            return self._settled_below(mark, threading.get_ident())

    def _settled_below(self, mark: int, me: int) -> bool:
        if self._taken < mark:
            return False
        if any(job.seq < mark for job in self._in_flight):
            return False
        if any(entry[2].seq < mark for entry in self._delayed):
            return False
        if me in self._reporting.values():
            # flush() from inside a callback: waiting for another thread's callback could
            # wait for one that is waiting for us.
            return True
        return not any(job.seq < mark and thread != me for job, thread in self._reporting.items())

    def wait_settled(self, mark: int, deadline: Optional[float]) -> bool:
        """Wait until every event admitted before ``mark`` is settled; False at deadline."""
        clock = self._clock
        me = threading.get_ident()
        with self._lock:
            while not self._settled_below(mark, me):
                left = None if deadline is None else deadline - clock.monotonic()
                if left is not None and left <= 0:
                    return False
                self._flush_marks.append(mark)
                try:
                    clock.wait(self._settled, left)
                finally:
                    self._flush_marks.remove(mark)
            return True

    def close(self) -> None:
        """Refuse new events from now on (they are dropped with reason ``shutdown``)."""
        with self._lock:
            self._accepting = False
            self._room.notify_all()

    def abandon(self) -> list[CustomEvent]:
        """Drop everything still pending, in flight included, with reason ``shutdown``.

        Returns the dropped events, oldest first, for ``on_error``.
        """
        with self._lock:
            victims = list(self._ready)
            victims += [entry[2].event for entry in sorted(self._delayed)]
            victims += [job.event for job in sorted(self._in_flight, key=lambda j: j.seq)]
            self._counters.dropped[SHUTDOWN] += len(victims)
            self._ready.clear()
            self._taken = self._appended
            self._delayed.clear()
            self._in_flight.clear()
            self._timer.notify_all()
            self._settled.notify_all()
            self._room.notify_all()
            return victims

    def stop(self) -> None:
        """Wake every waiting worker and have ``take`` return None from now on."""
        with self._lock:
            self._stopping = True
            self._jobs.notify_all()
            self._timer.notify_all()

    # -- reading ---------------------------------------------------------------------------

    def stats(self) -> Stats:
        with self._lock:
            return self._counters.snapshot(self._pending())

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending()
