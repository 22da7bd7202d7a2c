"""Events out of the store until they are settled: in flight, waiting to retry, reported.

``Jobs`` is the buffer's bookkeeping of them, guarded by the buffer's lock (as
``Counters`` is), together with the admission sequence flush marks are taken on: every
event admitted gets the next seq, and ``flush()`` waits until everything below its mark
has left the store, is neither in flight nor waiting to retry, and has had its outcome
reported.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from typing import TYPE_CHECKING, Optional

from tracker._event import CustomEvent

if TYPE_CHECKING:
    from tracker._buffer import Buffer


class Job:
    """An event out of the store for delivery, and its retry state."""

    __slots__ = (
        "attempts",
        "event",
        "failures",
        "first_attempt",
        "last_message",
        "last_status",
        "sent_at",
        "seq",
        "waiting_since",
        "worker",
    )

    def __init__(self, event: CustomEvent, seq: int, worker: bool) -> None:
        self.event = event
        self.seq = seq  # admission order; flush() waits for everything below its mark
        self.worker = worker  # last taken by a worker thread, not a caller draining
        self.attempts = 0  # requests sent, the first included
        self.failures = 0  # retryable failures other than 429s: what max_retries bounds
        self.first_attempt = 0.0
        self.sent_at = 0.0  # when the last attempt started
        self.last_status: Optional[int] = None
        self.last_message: Optional[str] = None
        # Since when events have waited for a sender, as of this one's taking: the store
        # was never empty since then (for the pacer: a shortfall of the planned rate
        # while events waited calls for more senders; one while the store ran empty says
        # nothing). A retry waited since it came due.
        self.waiting_since = math.inf


class Receipt:
    """A settled job whose outcome is being reported: flush() waits for its release
    (except on the reporting thread itself, whose callback may call flush())."""

    __slots__ = ("_buffer", "seq", "thread")

    def __init__(self, buffer: Buffer, seq: int) -> None:
        self._buffer = buffer
        self.seq = seq
        self.thread = threading.get_ident()

    def release(self) -> None:
        self._buffer._release(self)


class Jobs:
    """The in-flight set, the retry heap and the receipts of jobs being reported."""

    __slots__ = ("_delayed", "_in_flight", "_tiebreak", "appended", "receipts", "taken")

    def __init__(self) -> None:
        self._delayed: list[tuple[float, int, Job]] = []  # (due, tiebreak, job): a heap
        self._in_flight: set[Job] = set()
        self._tiebreak = itertools.count()
        self.receipts: set[Receipt] = set()
        self.appended = 0  # events ever admitted: the seq of the next one
        self.taken = 0  # events ever taken out of the store (or never to be: dropped, kept)

    def __len__(self) -> int:
        """Unsettled jobs: in flight or waiting to retry."""
        return len(self._delayed) + len(self._in_flight)

    @property
    def retrying(self) -> int:
        return len(self._delayed)

    def next_due(self) -> Optional[float]:
        """When the earliest retry is due (monotonic), None without any."""
        return self._delayed[0][0] if self._delayed else None

    def due(self, now: float, worker: bool) -> Optional[Job]:
        """The earliest retry due by ``now``, put in flight."""
        delayed = self._delayed
        if not delayed or delayed[0][0] > now:
            return None
        due, _, job = heapq.heappop(delayed)
        job.waiting_since = due
        job.worker = worker
        self._in_flight.add(job)
        return job

    def start(self, event: CustomEvent, worker: bool, waiting_since: float) -> Job:
        """An event just taken out of the store, put in flight."""
        job = Job(event, self.taken, worker)
        job.waiting_since = waiting_since
        self.taken += 1
        self._in_flight.add(job)
        return job

    def start_inline(self, event: CustomEvent) -> Job:
        """An event admitted straight into flight (never stored)."""
        job = Job(event, self.appended, worker=False)
        self.appended += 1
        self.taken += 1
        self._in_flight.add(job)
        return job

    def flying(self, job: Job) -> bool:
        """Still in flight: not abandoned at shutdown meanwhile."""
        return job in self._in_flight

    def land(self, job: Job) -> bool:
        """Take ``job`` out of flight; False when it was no longer there (abandoned)."""
        if job not in self._in_flight:
            return False
        self._in_flight.remove(job)
        return True

    def delay(self, job: Job, due: float) -> None:
        """A landed job waits in the retry heap until ``due``."""
        heapq.heappush(self._delayed, (due, next(self._tiebreak), job))

    def pop_retry(self) -> Optional[CustomEvent]:
        """For drop_oldest with an empty store: the event of the next retry, dropped."""
        return heapq.heappop(self._delayed)[2].event if self._delayed else None

    def clear(self) -> list[CustomEvent]:
        """Give up every job (shutdown): their events, oldest first, retries before those
        in flight; whatever the store still held counts as taken."""
        events = [entry[2].event for entry in sorted(self._delayed)]
        events += [job.event for job in sorted(self._in_flight, key=lambda j: j.seq)]
        self._delayed.clear()
        self._in_flight.clear()
        self.taken = self.appended
        return events

    def receipt(self, buffer: Buffer, seq: int) -> Receipt:
        receipt = Receipt(buffer, seq)
        self.receipts.add(receipt)
        return receipt

    def settled_below(self, mark: int, me: int) -> bool:
        """Everything admitted before ``mark`` settled and reported (for thread ``me``)."""
        if self.taken < mark:
            return False
        if any(job.seq < mark for job in self._in_flight):
            return False
        if any(entry[2].seq < mark for entry in self._delayed):
            return False
        receipts = self.receipts
        if any(r.thread == me for r in receipts):
            # flush() from inside a callback: waiting for another thread's callback could
            # wait for one that is waiting for us.
            return True
        return not any(r.seq < mark for r in receipts)
