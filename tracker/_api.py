"""The module-level functions: one process-wide Tracker behind ``tracker.track()`` & co."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from tracker import _green, _lifecycle
from tracker._counters import Stats
from tracker._telemetry import Health
from tracker._tracker import Tracker

if TYPE_CHECKING:
    from typing import Concatenate, ParamSpec

    P = ParamSpec("P")

R = TypeVar("R")

_default: Optional[Tracker] = None
# Held while the process-wide tracker is built (which starts a thread): green once gevent
# or eventlet patched, as after the fork in gunicorn's gevent worker.
_lock = _green.Lock()


def _new_lock() -> None:
    global _lock
    _lock = _green.Lock()  # may have been held by a parent thread at the fork


_lifecycle.on_fork(_new_lock)


def _like(model: Callable[P, R]) -> Callable[[Callable[..., Any]], Callable[P, R]]:
    """Give a forwarding function the signature (for type checkers and for help())."""

    def wrap(function: Callable[..., Any]) -> Callable[P, R]:
        function.__signature__ = inspect.signature(model)  # type: ignore[attr-defined]
        return function

    return wrap


def _like_method(
    model: Callable[Concatenate[Any, P], R],
) -> Callable[[Callable[..., Any]], Callable[P, R]]:
    """The same, for a function forwarding to a Tracker method."""

    def wrap(function: Callable[..., Any]) -> Callable[P, R]:
        parameters = list(inspect.signature(model).parameters.values())[1:]
        signature = inspect.signature(model).replace(parameters=parameters)
        function.__signature__ = signature  # type: ignore[attr-defined]
        if not function.__doc__:
            function.__doc__ = model.__doc__
        return function

    return wrap


@_like(Tracker)
def configure(*args: Any, **options: Any) -> Tracker:
    """Set up the process-wide tracker used by ``tracker.track()`` and friends; takes
    the options of ``Tracker``. A second call shuts the previous one down (flushing it)
    and replaces it."""
    global _default
    new = Tracker(*args, **options)
    with _lock.get():
        old, _default = _default, new
    if old is not None:
        old.shutdown()
    return new


def default_tracker() -> Tracker:
    """The process-wide tracker, built from the environment on first use."""
    global _default
    current = _default
    if current is None:
        with _lock.get():
            if _default is None:
                _default = Tracker()
            current = _default
    return current


@_like_method(Tracker.track)
def track(*args: Any, **fields: Any) -> Any:
    return default_tracker().track(*args, **fields)


@_like_method(Tracker.flush)
def flush(*args: Any, **kwargs: Any) -> Any:
    return default_tracker().flush(*args, **kwargs)


@_like_method(Tracker.shutdown)
def shutdown(*args: Any, **kwargs: Any) -> Any:
    """``shutdown()`` on the process-wide tracker; True when there is none."""
    current = _default
    return True if current is None else current.shutdown(*args, **kwargs)


async def aflush(timeout: Optional[float] = None) -> bool:
    """``await aflush()`` on the process-wide tracker: ``flush()`` without blocking the
    event loop."""
    return await default_tracker().aflush(timeout)


async def ashutdown(timeout: Optional[float] = None) -> bool:
    """``await ashutdown()`` on the process-wide tracker, without blocking the event
    loop; True when there is none."""
    current = _default
    return True if current is None else await current.ashutdown(timeout)


def stats() -> Stats:
    """``stats()`` of the process-wide tracker."""
    return default_tracker().stats()


@_like_method(Tracker.health)
def health(*args: Any, **kwargs: Any) -> Health:
    """``health()`` of the process-wide tracker."""
    result: Health = default_tracker().health(*args, **kwargs)
    return result


def current() -> Optional[Tracker]:
    """The process-wide tracker if there is one, building none (for integrations that
    must not start a tracker by merely looking, such as a metrics scrape)."""
    return _default
