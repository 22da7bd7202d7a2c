"""Where waiting events are kept: the storage seam of the buffer, and the memory store.

The buffer decides what happens to an event (admission, retries, flight, settlement) and
counts it; a ``Store`` only keeps the events that wait for their first attempt, oldest
first, and hears when any event's fate is sealed. The memory store is a deque; a durable
store (the SQLite spool) also keeps every unsettled event on disk, so its ``has_room``
bounds the disk rather than the memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Protocol

from tracker._counters import QUEUE_OVERFLOW
from tracker._event import CustomEvent


class Store(Protocol):
    """Every method runs under the buffer's lock: keep them cheap (no I/O)."""

    def __len__(self) -> int:
        """Waiting events ``pop`` can hand out now (in memory)."""

    @property
    def backlog(self) -> int:
        """Waiting events not in memory (on disk), handed out later: pending too."""

    @property
    def spooled(self) -> int:
        """Unsettled events on disk (a gauge for stats())."""

    @property
    def full_reason(self) -> str:
        """The drop reason when ``has_room`` says no."""

    def has_room(self, pending: int) -> bool:
        """Whether one more event may be admitted, ``pending`` being unsettled now."""

    def push(self, event: CustomEvent) -> None:
        """An admitted event, to wait for its first attempt."""

    def pop(self) -> CustomEvent:
        """The oldest waiting event, now going out (the store is not empty)."""

    def drain(self) -> list[CustomEvent]:
        """Every waiting event, oldest first; the store is empty afterwards."""

    def settled(self, events: Iterable[CustomEvent]) -> None:
        """These events are delivered, failed or dropped: nothing needs to keep them."""


class MemoryStore:
    """Waiting events in a deque; ``max_queue_size`` bounds every unsettled event."""

    __slots__ = ("_events", "_max", "pop", "push")
    backlog = 0
    spooled = 0
    full_reason = QUEUE_OVERFLOW

    def __init__(self, max_queue_size: int) -> None:
        self._events: deque[CustomEvent] = deque()
        self._max = max_queue_size
        # The deque's own methods: admission is the hot path of every track().
        self.push = self._events.append
        self.pop = self._events.popleft

    def __len__(self) -> int:
        return len(self._events)

    def has_room(self, pending: int) -> bool:
        return pending < self._max

    def drain(self) -> list[CustomEvent]:
        events = list(self._events)
        self._events.clear()
        return events

    def settled(self, events: Iterable[CustomEvent]) -> None:
        return None
