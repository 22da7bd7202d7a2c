"""The buffer's state under one lock, and what waits on it, reads it or ends it.

One lock covers the store of waiting events, the retry heap, the in-flight set, the
counters and the pacer, so ``tracked + recovered == delivered + failed + dropped +
pending`` holds at every moment a reader can observe. ``Ledger`` holds that state with
flush marks, shutdown (drop or keep what is left), events moving between processes (a
durable store's adoptions, a uWSGI master's hand-over) and the readings; ``Buffer``
(tracker/_buffer.py) adds an event's path through it: admission, flight, outcomes.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from tracker._clock import Deadline
from tracker._config import Config
from tracker._counters import DRY_RUN, SHUTDOWN, SPOOL_CORRUPT, Counters, Stats
from tracker._event import CustomEvent
from tracker._jobs import Jobs, Receipt
from tracker._overflow import Overflow
from tracker._pacing import Pacer, Turns
from tracker._store import Store


class Ledger:
    """Counters, flush marks and the sets of events (store, retry heap, in flight),
    under one lock."""

    overflow: Overflow  # made by Buffer (the drop_oldest policy takes from its queue)

    def __init__(self, config: Config, pacer: Pacer, store: Store) -> None:
        self._clock = clock = config.clock
        self._lock = lock = threading.Lock()
        self._work = threading.Condition(lock)  # idle workers: work or room arrived, or stop
        self._settled = threading.Condition(lock)  # flush() callers and drainers
        self._store = store
        self._pacer = pacer
        self.counters = Counters()
        self._jobs = Jobs()  # in flight, retrying, being reported; the admission seq
        self._turns = Turns(lock, clock, pacer)  # senders waiting for a slot
        self._idle = 0  # workers waiting in take()
        self._sending = 0  # jobs held by workers
        self._waiting_since = 0.0  # when the store last went from empty to not (monotonic)
        self.threads = 0  # worker threads alive (kept by the pool, under the lock)
        self._flush_marks: list[int] = []  # of every flush() waiting, drainers included
        self._draining = 0
        self._accepting = True
        self._stopping = False
        self._retire_when_idle = False
        self._kept = 0  # left in a durable store at shutdown: still pending, on disk

    def _note_waiting(self) -> None:
        """Before a push: events wait from now if none did (the pacer's evidence)."""
        store = self._store
        if not (len(store) or store.backlog):
            self._waiting_since = self._clock.monotonic()

    def _pending(self) -> int:
        store = self._store
        return len(store) + store.backlog + len(self._jobs) + self._kept

    def record_dry_run(self) -> None:
        with self._lock:
            self.counters.tracked += 1
            self.counters.dropped[DRY_RUN] += 1

    def noted(self, reason: str) -> None:
        """An event was dropped for ``reason`` (on the caller's thread): its last error."""
        with self._lock:
            self.counters.telemetry.error(reason, self._clock.time())

    def _release(self, receipt: Receipt) -> None:
        with self._lock:
            self._jobs.receipts.discard(receipt)
            self._wake_flush_if_done()

    def _wake_flush_if_done(self) -> None:
        # Wake flush() only when it may be done: with every event below its mark settled,
        # at most the events from the mark on can still be pending. (Waking it on every
        # settled event cost a tenth of the delivery rate while a batch job flushed, and
        # two context switches per event.)
        marks = self._flush_marks
        if marks and self._pending() <= self._jobs.appended - min(marks):
            self._settled.notify_all()

    # -- flush, shutdown ---------------------------------------------------------------------------

    def mark(self) -> int:
        """A flush mark: everything admitted so far has a seq below it."""
        with self._lock:
            return self._jobs.appended

    def settled_below(self, mark: int) -> bool:
        with self._lock:
            return self._jobs.settled_below(mark, threading.get_ident())

    def wait_settled(self, mark: int, deadline: Optional[Deadline]) -> bool:
        """Wait until every event admitted before ``mark`` is settled; False at deadline."""
        me = threading.get_ident()
        with self._lock:
            while not self._jobs.settled_below(mark, me):
                left = None if deadline is None else deadline.left()
                if left is not None and left <= 0:
                    return False
                self._flush_marks.append(mark)
                try:
                    self._clock.wait(self._settled, left)
                finally:
                    self._flush_marks.remove(mark)
            return True

    def close(self) -> None:
        """Refuse new events from now on (they are dropped with reason ``shutdown``)."""
        with self._lock:
            self._accepting = False
            self.overflow.closed()

    def abandon(self) -> list[CustomEvent]:
        """Drop everything still pending, in flight included, with reason ``shutdown``.
        Returns the dropped events, oldest first, for ``on_error``."""
        with self._lock:
            victims = self._store.drain()
            victims += self._jobs.clear()
            self.counters.dropped[SHUTDOWN] += len(victims)
            self._store.settled(victims)
            self._wake_all()
            return victims

    def keep(self) -> int:
        """With a durable store, at shutdown: stop sending what is still pending, which
        stays on disk for the next process (and counted as pending). Returns how many."""
        with self._lock:
            store = self._store
            kept = len(store.drain()) + len(self._jobs.clear())
            self._kept += kept
            self._wake_all()
            return kept + store.backlog

    def store_changed(self, change: Callable[[], tuple[int, int]]) -> None:
        """For a durable store's own thread: run ``change`` under the lock (it moves events
        between disk and memory) and wake who waits for work. It returns the events it
        adopted from earlier processes and those it lost (unreadable), for the counters."""
        with self._lock:
            recovered, lost = change()
            if recovered:
                self.counters.recovered += recovered
                self._jobs.appended += recovered  # flush() waits for adopted events too
            if lost:
                self.counters.dropped[SPOOL_CORRUPT] += lost
                self._jobs.taken += lost
            if len(self._store) and self._idle:
                self._work.notify_all()
            if self._draining or self._flush_marks:
                self._settled.notify_all()
            self.overflow.room_made()

    def stop(self) -> None:
        """Wake every waiting thread; ``take`` returns None from now on."""
        with self._lock:
            self._stopping = True
            self._wake_all()

    def retire_when_idle(self) -> None:
        """Nobody holds the tracker any more: workers end once nothing is pending."""
        with self._lock:
            self._retire_when_idle = True
            self._work.notify_all()

    def _wake_all(self) -> None:
        self._work.notify_all()
        self._settled.notify_all()
        self.overflow.closed()
        self._turns.wake_all()

    # -- a uWSGI master's held events (tracker/_hosts.py) ----------------------------------

    def hand_over(self) -> list[CustomEvent]:
        """Take out every waiting event (none is in flight: no sender ran here), for the
        worker that sends them. They leave ``tracked`` too: that worker counts them as
        ``recovered``, so the invariant holds in both processes."""
        with self._lock:
            events = self._store.drain()
            self._jobs.taken += len(events)
            self.counters.tracked -= len(events)
            self._store.settled(events)
            if self._flush_marks:
                self._settled.notify_all()
            self.overflow.room_made()
            return events

    def adopt(self, events: list[CustomEvent]) -> None:
        """Queue events another process accepted (counted as ``recovered``)."""
        with self._lock:
            self._note_waiting()
            for event in events:
                self._store.push(event)
            self.counters.recovered += len(events)
            self._jobs.appended += len(events)
            if self._idle:
                self._work.notify_all()

    # -- reading ---------------------------------------------------------------------------

    def stats(self) -> Stats:
        with self._lock:
            pacer = self._pacer
            return self.counters.snapshot(
                self._pending(),
                pacer.rate(self._clock.monotonic()),
                self._store.spooled,
                pacer.fallbacks(),
            )

    def health_figures(self) -> tuple[float, int, Optional[float], Optional[float], float]:
        """``(now, pending, last success, failing since, paused until)``, monotonic."""
        with self._lock:
            telemetry = self.counters.telemetry
            return (
                self._clock.monotonic(),
                self._pending(),
                telemetry.last_success,
                telemetry.failing_since,
                self._pacer.paused_until(),
            )

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending()

    def add_thread(self, cap: int) -> bool:
        """Count one more worker thread about to start; False when ``cap`` are running."""
        with self._lock:
            if self.threads >= cap or self._stopping:
                return False
            self.threads += 1
            return True

    def thread_failed(self) -> None:
        """A counted worker thread could not start."""
        with self._lock:
            self._thread_ended()

    def _thread_ended(self) -> None:
        self.threads -= 1
        self._settled.notify_all()  # wait_threads_ended()

    def wait_threads_ended(self, deadline: Deadline, own: bool) -> bool:
        """Wait until ``deadline`` (real time) for the worker threads to end, but the
        caller's ``own``; True when they have. A condition rather than ``Thread.join``:
        under eventlet on Python 3.13 a join whose time ran out raises instead of
        returning."""
        with self._lock:
            while self.threads > own:
                left = deadline.left()
                if left <= 0:
                    return False
                self._settled.wait(left)
            return True
