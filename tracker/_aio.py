"""asyncio for the Tracker: ``aflush``, ``ashutdown`` and ``async with``, none blocking the loop.

``flush()`` and ``shutdown()`` wait on locks and conditions, so they run on a thread of
their own and the coroutine awaits a future that thread settles. A thread per call, not
the loop's default executor: a flush with no timeout against a PX that hangs may wait a
long time, and ``asyncio.run()`` joins the default executor's threads at its end; ours
are daemon threads, and every one ends at the latest when the tracker is shut down
(which settles every event, by dropping what is left) or the process exits.

``track()`` needs nothing here: it never does I/O and stays a plain call.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

__all__ = ["AsyncMixin"]

T = TypeVar("T")
Self = TypeVar("Self", bound="AsyncMixin")


class AsyncMixin:
    """The coroutine face of a Tracker (which provides ``flush`` and ``shutdown``)."""

    if TYPE_CHECKING:

        def flush(self, timeout: Optional[float] = None) -> bool: ...

        def shutdown(self, timeout: Optional[float] = None) -> bool: ...

    async def aflush(self, timeout: Optional[float] = None) -> bool:
        """``flush(timeout)`` without blocking the event loop: True when every event
        accepted so far is settled, False when ``timeout`` seconds passed first.

        Cancelling the awaiting task stops the wait, not the events: they are still sent.
        """
        return await off_loop(self.flush, timeout, "px-tracker-aflush")

    async def ashutdown(self, timeout: Optional[float] = None) -> bool:
        """``shutdown(timeout)`` without blocking the event loop: flush within
        ``timeout`` (default ``exit_timeout``), drop what is left (counted, reason
        ``shutdown``), stop the senders. True when nothing had to be dropped.

        A cancelled ``ashutdown`` still shuts the tracker down (on its thread)."""
        return await off_loop(self.shutdown, timeout, "px-tracker-ashutdown")

    async def __aenter__(self: Self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.ashutdown()


async def off_loop(call: Callable[[Optional[float]], T], timeout: Optional[float], name: str) -> T:
    """Run ``call(timeout)`` on a new daemon thread and await its result (or exception)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle_result(result: T) -> None:
        if not future.done():  # the awaiting task may have been cancelled
            future.set_result(result)

    def settle_error(error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)

    def run() -> None:
        try:
            result = call(timeout)
        except BaseException as error:  # handed to the awaiting task, raised there
            _tell(loop, settle_error, error)
        else:
            _tell(loop, settle_result, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


def _tell(loop: asyncio.AbstractEventLoop, settle: Callable[[T], None], value: T) -> None:
    # A closed loop raises RuntimeError: nobody is waiting for the answer any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle, value)
