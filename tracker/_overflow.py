"""What admission does when there is no room: the overflow policies of ``max_queue_size``."""

from __future__ import annotations

import threading
from typing import Callable, Optional

import attrs

from tracker._clock import Clock
from tracker._config import Config, OverflowPolicy
from tracker._counters import QUEUE_OVERFLOW, SHUTDOWN, Counters
from tracker._event import CustomEvent
from tracker.errors import QueueFullError


@attrs.frozen
class Dropped:
    """An event that admission dropped (the new one, or with drop_oldest the oldest one)."""

    event: CustomEvent
    reason: str


class Overflow:
    """The slow path of admission, run under the buffer's lock (whose condition it waits
    on for "block"): shut down, or full."""

    def __init__(
        self,
        config: Config,
        counters: Counters,
        lock: threading.Lock,
        clock: Clock,
        drop_oldest: Callable[[], Optional[CustomEvent]],
    ) -> None:
        self._counters = counters
        self._clock = clock
        self._policy = config.overflow
        self._max = config.max_queue_size
        self._block_timeout = config.block_timeout
        self._drop_oldest = drop_oldest
        self._room = threading.Condition(lock)  # producers blocked on a full queue
        self._blocked = 0
        # Set by the Tracker: False on a thread that must never wait for room (a worker
        # running a callback would wait for itself).
        self.may_block: Callable[[], bool] = lambda: True
        # Set by the buffer: the drop reason of "no room" now (the spool's disk bound
        # gives spool_full).
        self.reason: Callable[[], str] = lambda: QUEUE_OVERFLOW

    def make_room(
        self, event: CustomEvent, admissible: Callable[[], Optional[bool]]
    ) -> tuple[bool, Optional[Dropped]]:
        """Whether ``event`` may go in now, and what was dropped. ``admissible()`` says
        None when shut down, else whether there is room."""
        counters = self._counters
        state = admissible()
        if state is None:
            counters.dropped[SHUTDOWN] += 1
            return False, Dropped(event, SHUTDOWN)
        policy = self._policy
        reason = self.reason()
        what = (
            f"queue full: {self._max} events pending"
            if reason == QUEUE_OVERFLOW
            else "spool full (spool_max_bytes reached)"
        )
        if policy is OverflowPolicy.BLOCK:
            if not self.may_block():
                counters.dropped[reason] += 1
                raise QueueFullError(
                    f"{what}, and a sender thread cannot "
                    "wait for room it would have to make itself (overflow='block')"
                )
            state = self._wait_for_room(admissible)
            if state is None:
                counters.dropped[SHUTDOWN] += 1
                return False, Dropped(event, SHUTDOWN)
            if state:
                return True, None
            counters.dropped[reason] += 1
            raise QueueFullError(
                f"{what} and no room within "
                f"{self._block_timeout}s (overflow='block', max_queue_size={self._max})"
            )
        counters.dropped[reason] += 1
        if policy is OverflowPolicy.RAISE:
            raise QueueFullError(f"{what} (overflow='raise', max_queue_size={self._max})")
        if policy is OverflowPolicy.DROP_OLDEST:
            victim = self._drop_oldest()
            if victim is not None:
                self.room_made()
                return True, Dropped(victim, reason)
        # drop_newest, or drop_oldest with every pending event already in flight.
        return False, Dropped(event, reason)

    def _wait_for_room(self, admissible: Callable[[], Optional[bool]]) -> Optional[bool]:
        clock = self._clock
        timeout = self._block_timeout
        deadline = None if timeout is None else clock.monotonic() + timeout
        try:
            while (state := admissible()) is False:
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
            self._counters.dropped[self.reason()] += 1
            raise
        return state

    def room_made(self) -> None:
        if self._blocked:
            self._room.notify()

    def closed(self) -> None:
        self._room.notify_all()
