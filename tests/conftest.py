"""Shared helpers: trackers that are always shut down, and polling with a deadline."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from tracker import Tracker

API_KEY = "test-key-0001"
PRODUCT_KEY = "AP-TEST-1"

# Never let a developer's proxy settings route loopback test traffic.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_var, None)
# Nor a developer's PX_* configuration (PX_SLOW selects the long test variants).
for _var in [v for v in os.environ if v.startswith("PX_") and v != "PX_SLOW"]:
    os.environ.pop(_var)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed; never sleeps long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


# Fast retries for tests that are not about the backoff schedule itself.
FAST_RETRY: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.05}


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
