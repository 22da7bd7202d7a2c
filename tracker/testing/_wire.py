"""What PX's events endpoint looks like on the wire: paths, headers, bodies, validation."""

from __future__ import annotations

import json
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Optional

import attrs
from requests.structures import CaseInsensitiveDict

EVENTS_PATH = "/v1/events/custom"
API_KEY_HEADER = "X-APTRINSIC-API-KEY"
USER_TYPES = ("LEAD", "USER", "VISITOR", "EMPTY_USER_TYPE")
REQUIRED = ("identifyId", "propertyKey", "userType", "eventName")
CREATED_BODY = {"body": {}, "statusCode": "CREATED", "statusCodeValue": 201}


def px_error(status: int, message: str, sub_errors: Iterable[str] = ()) -> dict[str, Any]:
    """An error body in the shape PX answers with."""
    return {
        "externalapierror": {
            "status": HTTPStatus(status).name if status in HTTPStatus._value2member_map_ else "",
            "message": message,
            "debugMessage": None,
            "subErrors": [{"message": text} for text in sub_errors],
        }
    }


def default_body(status: int) -> dict[str, Any]:
    """PX's body for ``status``: the 201 body for a 2xx, else its error shape."""
    if 200 <= status < 300:
        return dict(CREATED_BODY, statusCode=HTTPStatus(status).name, statusCodeValue=status)
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return px_error(status, phrase)


class Headers(CaseInsensitiveDict):  # type: ignore[type-arg]
    """Request headers, looked up case-insensitively; the API key is masked in the repr
    so a failing assertion never prints it."""

    def __repr__(self) -> str:
        shown = {k: ("***" if k.lower() == API_KEY_HEADER.lower() else v) for k, v in self.items()}
        return repr(shown)


@attrs.frozen
class RecordedRequest:
    """One request FakePX received and what it answered (``status`` None: it dropped the
    connection instead). Times are ``time.monotonic()`` values; ``delayed`` is how long
    the leaky-bucket limiter in delaying mode held it before answering (else 0)."""

    method: str
    path: str
    headers: Headers
    body: Any  # the parsed JSON body, or None when there was none or it was not JSON
    arrived_at: float
    answered_at: float
    status: Optional[int]
    raw_body: bytes = attrs.field(repr=False, default=b"")
    client_port: int = 0  # the client's source port: one per keep-alive connection
    delayed: float = 0.0


def parse_json(raw: bytes) -> Any:
    """The JSON value of a body, or None when it is empty or not JSON."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def validate_event(raw: bytes) -> list[str]:
    """What PX would refuse in this request body (empty when it would accept it)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return ["body is not valid JSON"]
    if not isinstance(data, dict):
        return ["body must be a JSON object"]
    problems = [
        f"{name} must not be null or empty"
        for name in REQUIRED
        if not isinstance(data.get(name), str) or not data[name]
    ]
    if isinstance(data.get("userType"), str) and data["userType"] not in USER_TYPES:
        problems.append(f"userType must be one of {', '.join(USER_TYPES)}")
    if "date" in data and (isinstance(data["date"], bool) or not isinstance(data["date"], int)):
        problems.append("date must be an integer (epoch milliseconds)")
    for name in ("attributes", "globalContext"):
        if name in data and not isinstance(data[name], dict):
            problems.append(f"{name} must be an object")
    return problems
