"""The testing kit: FakePX, a real local PX endpoint with faults, and FakeClock.

    from tracker.testing import FakePX
    with FakePX(api_key="k") as px:
        t = Tracker("k", product_key="AP-1", base_url=px.url)
        t.track("u1", "signup"); t.flush()
        assert px.events[0]["eventName"] == "signup"

With pytest, the ``fake_px`` fixture (installed with the package) gives a started one.
"""

from __future__ import annotations

# Beside the documented names, helpers for the package's own tests and command line,
# importable from here (``import X as X`` marks them as re-exported for ruff and mypy).
from tracker.testing._clock import FakeClock
from tracker.testing._fakepx import FakePX
from tracker.testing._server import CONNECTION_THREAD as CONNECTION_THREAD
from tracker.testing._wire import API_KEY_HEADER as API_KEY_HEADER
from tracker.testing._wire import CREATED_BODY as CREATED_BODY
from tracker.testing._wire import EVENTS_PATH as EVENTS_PATH
from tracker.testing._wire import REQUIRED as REQUIRED
from tracker.testing._wire import USER_TYPES as USER_TYPES
from tracker.testing._wire import Headers as Headers
from tracker.testing._wire import RecordedRequest
from tracker.testing._wire import px_error as px_error
from tracker.testing._wire import validate_event as validate_event

# The documented names, pinned by tests/test_exported_members.py.
__all__ = ["FakeClock", "FakePX", "RecordedRequest"]
