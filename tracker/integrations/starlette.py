"""Starlette and FastAPI: ``lifespan``, which delivers what is pending when the app stops.

    from tracker.integrations.starlette import lifespan
    app = FastAPI(lifespan=lifespan)          # or Starlette(lifespan=lifespan)

At startup it makes sure the process-wide tracker exists: the one ``tracker.configure()``
set up, else one built from the ``PX_*`` environment (so a missing API key fails the
startup, not the first request). At shutdown it awaits ``tracker.ashutdown()``: pending
events are delivered within ``exit_timeout`` without blocking the event loop, the rest
dropped (counted). Should the app start again in the same process (a test client used
twice), the tracker is started afresh with the options it had.

An app with a lifespan of its own enters this one inside it::

    @asynccontextmanager
    async def app_lifespan(app):
        async with lifespan(app):
            yield

It is plain asyncio (any ASGI server's lifespan works the same) and imports nothing from
Starlette.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tracker import _api
from tracker._tracker import Tracker

__all__ = ["lifespan"]


@asynccontextmanager
async def lifespan(app: object) -> AsyncIterator[None]:
    """An ASGI lifespan (``lifespan=`` of Starlette and FastAPI): the tracker ready at
    startup, ``await tracker.ashutdown()`` at shutdown."""
    _ready()
    try:
        yield
    finally:
        await _api.ashutdown()


def _ready() -> Tracker:
    current = _api.current()
    if current is None:
        return _api.default_tracker()
    if current._closed:  # shut down by an earlier lifespan of this process
        config = current.config
        return _api.configure(**{name: getattr(config, name) for name in config.given})
    return current
