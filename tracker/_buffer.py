"""An event's path through the buffer: admission, flight, retries, settlement.

``Buffer`` moves events through the state ``Ledger`` keeps (tracker/_ledger.py), under its
one lock, so an event changes state in exactly one place and the invariant holds at every
moment a reader can observe.
"""

from __future__ import annotations

import threading
from typing import Optional

from tracker._clock import Deadline
from tracker._config import Config
from tracker._event import CustomEvent
from tracker._jobs import Job, Receipt
from tracker._ledger import Ledger
from tracker._overflow import Dropped, Overflow
from tracker._pacing import Pacer
from tracker._store import Store
from tracker._telemetry import LastError


class Buffer(Ledger):
    """Store (FIFO), retry heap and in-flight set, bounded together by the store."""

    def __init__(self, config: Config, pacer: Pacer, store: Store) -> None:
        super().__init__(config, pacer, store)
        self.overflow = Overflow(config, self.counters, self._lock, self._clock, self._drop_oldest)
        self.overflow.reason = lambda: store.full_reason

    # -- admission (caller's thread) -------------------------------------------------------

    def admit(self, event: CustomEvent) -> Optional[Dropped]:
        """Queue ``event``. None when it simply went in (the fast path); else what was
        dropped to make room, or the event itself when it was refused."""
        with self._lock:
            if self._accepting and self._store.has_room(self._pending()):
                self.counters.tracked += 1
                self._append(event)
                return None
            try:
                admitted, dropped = self.overflow.make_room(event, self._admissible)
            finally:
                self._tracked_after_waiting()
            if admitted:
                self._append(event)
            return dropped

    def admit_inline(self, event: CustomEvent) -> tuple[Optional[Job], Optional[Dropped]]:
        """Admit ``event`` straight into flight, for a caller that sends it itself."""
        with self._lock:
            if not (self._accepting and self._store.has_room(self._pending())):
                try:
                    admitted, dropped = self.overflow.make_room(event, self._admissible)
                finally:
                    self._tracked_after_waiting()
                if not admitted:
                    return None, dropped
            else:
                self.counters.tracked += 1
                dropped = None
            return self._jobs.start_inline(event), dropped

    def _tracked_after_waiting(self) -> None:
        """Count an event that went through the overflow policy as tracked, in the same
        locked section as its admission or drop (the policy counted the drop, also when it
        raised): "block" releases the lock while it waits for room, and a reader meanwhile
        must not see it tracked while it is neither pending nor dropped."""
        self.counters.tracked += 1

    def _admissible(self) -> Optional[bool]:
        """For the overflow policy: None when shut down, else whether there is room."""
        if not self._accepting:
            return None
        return self._store.has_room(self._pending())

    def _append(self, event: CustomEvent) -> None:
        self._note_waiting()
        self._store.push(event)
        self._jobs.appended += 1
        if self._idle and self._sending < self._pacer.concurrency():
            # An idle worker may take it. Not otherwise: with as many in flight as the
            # round trip calls for, a worker past that number waits in take(), and
            # waking it for every track() (hundreds a second in a busy app) only took
            # the GIL from the app; a worker that finishes takes the next job itself.
            self._work.notify()
        if self._draining:
            self._settled.notify_all()  # a caller draining on its own thread has work now

    def _drop_oldest(self) -> Optional[CustomEvent]:
        """For drop_oldest: the oldest event not in flight, out of the queue."""
        if len(self._store):
            self._jobs.taken += 1
            victim: Optional[CustomEvent] = self._store.pop()
        else:
            victim = self._jobs.pop_retry()
        if victim is not None:
            self._store.settled((victim,))
        return victim

    # -- taking work (worker threads, and callers draining the queue themselves) -----------

    def _next_job(self, now: float, worker: bool) -> Optional[Job]:
        job = self._jobs.due(now, worker)
        if job is None and len(self._store):
            job = self._jobs.start(self._store.pop(), worker, self._waiting_since)
        return job

    def take(self, finished: Optional[Job]) -> tuple[Optional[Job], bool]:
        """For a worker: hand back the job it ``finished`` with, and wait for the next one
        it may send within the pacer's concurrency. None when stopped (or retired: an
        orphaned tracker with nothing left). The flag asks for one more worker."""
        clock = self._clock
        with self._lock:
            if finished is not None:
                # This worker's slot is free. Counted by the worker, not by the job's
                # flag: a job it put back for a retry may be another worker's by now (its
                # flag set again), and clearing that flag leaked a slot for good; once
                # the leaks reached the concurrency, every sender waited with no timeout
                # and delivery stopped.
                self._sending -= 1
            while not self._stopping:
                limit = self._pacer.concurrency()
                now = clock.monotonic()
                if self._sending < limit:
                    job = self._next_job(now, worker=True)
                    if job is not None:
                        self._sending += 1
                        due = self._jobs.next_due()
                        waiting = len(self._store) or (due is not None and due <= now)
                        grow = bool(waiting) and not self._idle and self.threads < limit
                        return job, grow
                if self._retire_when_idle and not self._pending():
                    break
                if self.threads > 2 * limit + 1:
                    break  # far more threads than the round trip needs: this one ends
                timeout: Optional[float] = None
                due = self._jobs.next_due()
                if due is not None and self._sending < limit:
                    timeout = due - now
                self._idle += 1
                try:
                    clock.wait(self._work, timeout)
                finally:
                    self._idle -= 1
            self._thread_ended()
            return None, False

    def take_to_drain(self, mark: int, deadline: Optional[Deadline]) -> Optional[Job]:
        """For a caller sending on its own thread (flush() from a callback, or with no
        threads at exit): the next job, or None once everything admitted before ``mark``
        is settled (by whichever thread), or at the deadline."""
        clock = self._clock
        me = threading.get_ident()
        with self._lock:
            while not self._stopping and not self._jobs.settled_below(mark, me):
                now = clock.monotonic()
                job = self._next_job(now, worker=False)
                if job is not None:
                    return job
                due = self._jobs.next_due()
                timeout = None if due is None else due - now
                if deadline is not None:
                    left = deadline.left()
                    if left <= 0:
                        return None
                    timeout = left if timeout is None else min(timeout, left)
                self._draining += 1
                self._flush_marks.append(mark)
                try:
                    clock.wait(self._settled, timeout)
                finally:
                    self._draining -= 1
                    self._flush_marks.remove(mark)
            return None

    def await_turn(self, job: Job) -> bool:
        """Wait for the pacer's slot and the end of any 429 pause. False when the job was
        abandoned meanwhile (shutdown): do not send it."""
        with self._lock:
            pacer = self._pacer
            before = pacer.concurrency()
            if self._turns.wait(
                lambda: self._jobs.flying(job) and not self._stopping, job.waiting_since
            ):
                job.sent_at = self._clock.monotonic()
                more = pacer.concurrency() - before
                if more > 0 and self._idle:
                    # The pacer saw too few senders: idle ones take the waiting events
                    # (with none idle, the next take() asks for a thread).
                    self._work.notify(more)
                return True
            return False

    # -- outcomes (the sender's thread) ----------------------------------------------------

    def settle(
        self, job: Job, failed_reason: Optional[str] = None, *, receipt: bool = True
    ) -> Optional[Receipt]:
        """The job's final outcome: delivered, or failed for ``failed_reason``. A receipt
        to release once its callback ran; None when the job had been abandoned (then it
        is not counted again), or with ``receipt=False`` (no callback will run: flush()
        has nothing to wait for once it is settled)."""
        with self._lock:
            if not self._jobs.land(job):
                return None
            clock = self._clock
            telemetry = self.counters.telemetry
            if failed_reason is None:
                self.counters.delivered += 1
                # Its 2xx just came (settle follows it at once): one lock for both.
                now, wall = clock.monotonic(), clock.time()
                telemetry.attempt(now, wall, now - job.sent_at, None, None, None)
                telemetry.delivered(wall, job.event.date)
            else:
                self.counters.failed[failed_reason] += 1
                telemetry.last_errors[failed_reason] = LastError(
                    time=clock.time(), status_code=job.last_status, message=job.last_message
                )
            self._store.settled((job.event,))
            told = self._jobs.receipt(self, job.seq) if receipt else None
            self._after_settle()
            return told

    def attempted(
        self, job: Job, error: str, status: Optional[int], message: Optional[str]
    ) -> None:
        """An attempt of the job ended other than in a 2xx (``error``: what it came to),
        for the request figures and health; a 2xx is recorded by ``settle``."""
        clock = self._clock
        with self._lock:
            now = clock.monotonic()
            self.counters.telemetry.attempt(
                now, clock.time(), now - job.sent_at, error, status, message
            )

    def answered(self, job: Job, pause: Optional[float]) -> bool:
        """The server answered the job's attempt (``pause``: a 429's, else None). True
        when the round trip now calls for more requests in flight than threads run."""
        now = self._clock.monotonic()
        pacer = self._pacer
        if pause is not None:
            with self._lock:
                self.counters.rate_limited += 1
                pacer.rate_limited(now, job.sent_at, pause)
                tell = pacer.wants_refill()
            if tell:
                pacer.refill()  # a shared limiter tells the fleet now, outside the lock
            return False
        with self._lock:
            before = pacer.concurrency()
            pacer.answered(now, job.sent_at)
            limit = pacer.concurrency()
            waiting = len(self._store) or self._store.backlog or self._jobs.retrying
            if limit <= before or not waiting:
                return False
            if self._idle:
                self._work.notify()  # room for more in flight: an idle worker takes it
                return False
            return self.threads < limit

    def reschedule(self, job: Job, delay: float) -> bool:
        """Move an in-flight job to the retry heap, due in ``delay`` seconds."""
        with self._lock:
            if not self._jobs.land(job):
                return False
            self._jobs.delay(job, self._clock.monotonic() + delay)
            self.counters.retries += 1
            if self._idle:
                self._work.notify()  # an idle worker may wait with no timeout
            if self._draining:
                self._settled.notify_all()
            return True

    def hold(self, job: Job, delay: float) -> bool:
        """Keep an in-flight job ``delay`` seconds before its retry (inline senders).
        False when it was abandoned meanwhile."""
        clock = self._clock
        with self._lock:
            if not self._jobs.flying(job):
                return False
            self.counters.retries += 1
            until = clock.monotonic() + delay
            while self._jobs.flying(job):
                now = clock.monotonic()
                if now >= until:
                    return True
                clock.wait(self._settled, until - now)
            return False

    def _after_settle(self) -> None:
        self.overflow.room_made()
        self._wake_flush_if_done()
        if self._retire_when_idle and self._idle and not self._pending():
            self._work.notify_all()  # an orphaned tracker's idle senders end now
