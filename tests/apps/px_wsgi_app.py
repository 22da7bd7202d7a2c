"""A WSGI app for tests/test_fork.py (``gunicorn --preload -w 3``) and tests/test_uwsgi.py.

The module is imported once, in the server's master (gunicorn ``--preload``, uWSGI
without ``--lazy-apps``): that is where the
process-wide tracker is configured and where one ``app_boot`` event is tracked, before
any worker is forked. Every request to ``/track?id=...`` then tracks one
``http_request`` event in whichever worker served it; ``/health`` tracks nothing.
The FakePX to send to comes from ``PX_TEST_BASE_URL`` (it runs in the test process).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from typing import Any, Callable
from urllib.parse import parse_qs

import tracker

# As an app would: the tracker's warnings and errors show in the server's log.
logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
tracker.configure(
    api_key=os.environ["PX_TEST_API_KEY"],
    product_key=os.environ.get("PX_TEST_PRODUCT_KEY", "AP-GUNICORN-1"),
    base_url=os.environ["PX_TEST_BASE_URL"],
)
boot_id = os.environ.get("PX_TEST_BOOT_ID", "gunicorn-master")
tracker.track(boot_id, "app_boot", attributes={"pid": os.getpid()})


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    answer: dict[str, Any] = {"pid": os.getpid()}
    if path == "/track":
        request_id = parse_qs(environ.get("QUERY_STRING", "")).get("id", [""])[0]
        # A little work per request, so that concurrent requests spread over the workers.
        time.sleep(0.01)
        answer["event_id"] = tracker.track(
            f"user-{request_id}",
            "http_request",
            attributes={"request_id": request_id, "pid": os.getpid()},
        )
    elif path != "/health":
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    body = json.dumps(answer).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
