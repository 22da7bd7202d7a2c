"""Starlette and FastAPI: with ``lifespan``, events tracked in routes are delivered by the
app's shutdown, through Starlette's TestClient (a real ASGI lifespan)."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import tracker
from tracker import ConfigError
from tracker.integrations.starlette import lifespan
from tracker.testing import FakePX

from ._support import API_KEY, PRODUCT_KEY

if not any(importlib.util.find_spec(name) for name in ("httpx2", "httpx")):
    pytest.skip(
        "TestClient needs httpx2 or httpx: pip install 'px-tracker[dev]'", allow_module_level=True
    )
starlette_apps = pytest.importorskip("starlette.applications", reason="Starlette not installed")
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

with warnings.catch_warnings():
    # Starlette >= 1.x prefers httpx2 and warns when only httpx is there (httpx2 needs
    # Python >= 3.11; the dev extra installs it there).
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.usefixtures("fresh_default")


async def signup(request: Request) -> JSONResponse:
    user = request.path_params["user"]
    return JSONResponse({"event_id": tracker.track(user, "starlette signup")})


def starlette_app(app_lifespan: Any = lifespan) -> Any:
    return starlette_apps.Starlette(routes=[Route("/signup/{user}", signup)], lifespan=app_lifespan)


def configure(px: FakePX) -> tracker.Tracker:
    return tracker.configure(API_KEY, product_key=PRODUCT_KEY, base_url=px.url, flush_at_exit=False)


def test_the_shutdown_delivers_what_routes_tracked(fake_px: FakePX) -> None:
    """PX holds every request until the app is shutting down, right before the tracker's
    shutdown: the events are all pending then, and it is that shutdown that delivers."""
    t = configure(fake_px)
    fake_px.hold()
    seen: dict[str, int] = {}

    @asynccontextmanager
    async def app_lifespan(app: object) -> AsyncIterator[None]:
        async with lifespan(app):
            yield
            seen["pending"] = t.stats().pending
            fake_px.release()

    with TestClient(starlette_app(app_lifespan)) as client:
        ids = [client.get(f"/signup/user-{i}").json()["event_id"] for i in range(4)]
    assert seen["pending"] == 4
    assert sorted(fake_px.event_ids()) == sorted(ids)
    s = t.stats()
    assert (s.delivered, s.pending, s.dropped) == (4, 0, 0)
    assert t.track("late", "after shutdown") is None  # the lifespan shut it down


def test_startup_builds_the_tracker_from_the_environment(
    fake_px: FakePX, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PX_API_KEY", API_KEY)
    monkeypatch.setenv("PX_PRODUCT_KEY", "AP-FROM-ENV")
    monkeypatch.setenv("PX_BASE_URL", fake_px.url)
    with TestClient(starlette_app()) as client:
        assert tracker._api.current() is not None  # built at startup, before any request
        client.get("/signup/erin")
    assert [e["propertyKey"] for e in fake_px.find("starlette signup")] == ["AP-FROM-ENV"]


def test_startup_fails_without_an_api_key() -> None:
    with pytest.raises(ConfigError, match="PX_API_KEY"), TestClient(starlette_app()):
        pass


def test_a_second_startup_in_the_process_gets_a_fresh_tracker(fake_px: FakePX) -> None:
    first = configure(fake_px)
    app = starlette_app()
    for user in ("first-run", "second-run"):
        with TestClient(app) as client:
            assert client.get(f"/signup/{user}").json()["event_id"] is not None
    assert sorted(e["identifyId"] for e in fake_px.find("starlette signup")) == [
        "first-run",
        "second-run",
    ]
    second = tracker.default_tracker()
    assert second is not first
    assert (second.config.base_url, second.config.flush_at_exit) == (fake_px.url, False)
    assert second.stats().delivered == 1


def test_fastapi_lifespan(fake_px: FakePX) -> None:
    fastapi = pytest.importorskip("fastapi", reason="FastAPI is not installed")
    t = configure(fake_px)
    app = fastapi.FastAPI(lifespan=lifespan)

    @app.post("/orders/{user}")
    async def order(user: str) -> dict[str, Any]:
        return {"event_id": tracker.track(user, "fastapi order", attributes={"items": 2})}

    with TestClient(app) as client:
        event_id = client.post("/orders/frank").json()["event_id"]
    assert [e["eventId"] for e in fake_px.find("fastapi order")] == [event_id]
    assert fake_px.find("fastapi order")[0]["attributes"] == {"items": 2}
    assert t.stats().delivered == 1
    assert t.track("late", "after shutdown") is None
