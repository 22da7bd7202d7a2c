"""Shared fixtures: trackers that are always shut down, raw servers; helpers live in _support."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from tracker import Tracker, _api

from ._rawserver import raw_server  # noqa: F401 (a fixture for every test file)
from ._support import API_KEY, PRODUCT_KEY

# Never let a developer's proxy settings route loopback test traffic.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_var, None)
# Nor a developer's PX_* configuration (PX_SLOW selects the long test variants).
for _var in [v for v in os.environ if v.startswith("PX_") and v != "PX_SLOW"]:
    os.environ.pop(_var)


@pytest.fixture
def make_tracker() -> Iterator[Callable[..., Tracker]]:
    """Build Trackers (API_KEY and PRODUCT_KEY by default) that are shut down after the
    test, even when it fails, so no worker outlives it."""
    made: list[Tracker] = []

    def make(base_url: str, **options: Any) -> Tracker:
        options.setdefault("api_key", API_KEY)
        options.setdefault("product_key", PRODUCT_KEY)
        options.setdefault("flush_at_exit", False)
        tracker = Tracker(base_url=base_url, **options)
        made.append(tracker)
        return tracker

    yield make
    for tracker in made:
        tracker.shutdown(timeout=0)


@pytest.fixture
def fresh_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No process-wide tracker before the test (``tracker.configure()`` & co. start
    afresh); the one the test configured is shut down after it, the previous restored."""
    monkeypatch.setattr(_api, "_default", None)
    yield
    current = _api._default
    if current is not None:
        current.shutdown(timeout=0)
