"""Pieces several cases share: the peer SDKs (when installed), PX wire bodies and plain
``requests`` loops, the all-delivered row."""

from __future__ import annotations

import importlib
import json
import logging
import re
import time
import uuid
from types import ModuleType
from typing import Any, Optional

import requests
from requests.adapters import HTTPAdapter

from benchmarks._common import (
    API_KEY,
    EVENT_NAME,
    IDENTIFY_ID,
    NOT_INSTALLED,
    PRODUCT_KEY,
    Goal,
    Row,
    ServerProcess,
    attributes,
)

WARMUP_CALLS = 100

# The peers log upload errors (the memory case points them at a dead port) and PostHog
# warns about its own options; none of that is benchmark output.
for _name in ("segment", "posthog", "backoff", "urllib3"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)


def _optional(module: str) -> Optional[ModuleType]:
    """A peer SDK, or None when it is not installed (its columns then say so)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def segment_sdk() -> Optional[ModuleType]:
    return _optional("segment.analytics")


def posthog_sdk() -> Optional[ModuleType]:
    return _optional("posthog")


def slug(name: str) -> str:
    """A variant's name as a JSON key prefix: "http.client 200/s" -> "http_client_200_s"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def peer_row(row: Row, available: bool) -> Row:
    if not available:
        row.baseline_status = NOT_INSTALLED
        row.baseline_samples = None
    return row


def wire_bodies(n: int) -> list[dict[str, Any]]:
    """Event bodies in PX's wire form, as ours sends them."""
    now = int(time.time() * 1000)
    return [
        {
            "eventId": str(uuid.uuid4()),
            "identifyId": IDENTIFY_ID,
            "propertyKey": PRODUCT_KEY,
            "date": now,
            "userType": "USER",
            "eventName": EVENT_NAME,
            "attributes": attributes(),
        }
        for _ in range(n)
    ]


def plain_session(pool: int) -> requests.Session:
    session = requests.Session()
    session.headers.update({"X-APTRINSIC-API-KEY": API_KEY, "Content-Type": "application/json"})
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool, max_retries=0)
    session.mount("http://", adapter)
    session.trust_env = False
    return session


def post_all(session: requests.Session, url: str, bodies: list[dict[str, Any]]) -> int:
    ok = 0
    for body in bodies:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        response = session.post(url, data=data, timeout=10)
        ok += 200 <= response.status_code < 300
    return ok


def confirmed(px: ServerProcess, n: int, elapsed: float, cpu: float) -> dict[str, float]:
    server = px.stats()
    px.clear()
    events = server["unique_events"]  # a retried duplicate must not count twice
    return {
        "events_per_s": events / elapsed,
        "confirmed": float(events),
        "requests": float(server["requests"]),
        "cpu_ms_per_event": cpu / n * 1000,
    }


def all_delivered_row(
    case: str,
    delivered: list[float],
    n: int,
    explain: str,
    extra: Optional[dict[str, Any]] = None,
    *,
    metric: str = "events delivered (worst rep)",
) -> Row:
    """The row whose goal is that every repetition delivered all ``n`` events."""
    return Row(
        case,
        metric,
        "events",
        delivered,
        baseline="events tracked (constant)",
        baseline_value=float(n),
        goal=Goal("all delivered, every rep", "value", "==", float(n), stat="min"),
        digits=0,
        explain=explain,
        extra=extra or {},
    )
