"""``tracker send`` input: a JSON Lines line to an event object, then to ``track()`` arguments."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Optional

from tracker.errors import ValidationError

_CAMEL_FIELDS = {
    "identifyId": "identify_id",
    "eventName": "event_name",
    "propertyKey": "property_key",
    "userType": "user_type",
    "accountId": "account_id",
    "date": "date",
    "eventId": "event_id",
    "sessionId": "session_id",
    "eventType": "event_type",
    "globalContext": "global_context",
    "attributes": "attributes",
    "url": "url",
    "referrer": "referrer",
    "remoteHost": "remote_host",
}
_FIELDS = {**_CAMEL_FIELDS, **{name: name for name in _CAMEL_FIELDS.values()}}


class BadLine(Exception):
    """A line that cannot become an event; ``raw`` when it was not a JSON object."""

    def __init__(
        self, reason: str, *, raw: Optional[str] = None, event: Optional[dict[str, Any]] = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw
        self.event = event


def parse_line(data: bytes) -> dict[str, Any]:
    """The event object of one input line: a plain event, or the ``event`` of a
    dead-letter record. Raises BadLine."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raw = data.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
        raise BadLine(f"not UTF-8 text ({exc.reason} at byte {exc.start})", raw=raw) from None
    text = text.strip()
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise BadLine(f"not JSON: {exc}", raw=text) from None
    if not isinstance(obj, dict):
        raise BadLine(f"not a JSON object (got a JSON {type(obj).__name__})", raw=text)
    if "line" in obj and "reason" in obj:  # a record of a dead-letter file
        if isinstance(obj.get("event"), dict):
            event: dict[str, Any] = obj["event"]
            return event
        if "raw" in obj:
            raw_text = obj["raw"]
            raw_text = raw_text if isinstance(raw_text, str) else json.dumps(raw_text)
            raise BadLine(str(obj["reason"]), raw=raw_text)
        raise BadLine("dead-letter record without an event object", raw=text)
    return obj


def _date(value: object) -> object:
    """``date`` from JSON: epoch ms stays an int, ISO-8601 becomes an aware datetime."""
    if not isinstance(value, str):
        return value  # track() checks ints and refuses everything else, naming the field
    text = value.strip()
    if text[-1:] in ("Z", "z"):  # fromisoformat() takes no "Z" before Python 3.11
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            "date", f"must be epoch milliseconds or an ISO-8601 date-time (got {value!r})"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValidationError("date", f"an ISO-8601 date-time needs a timezone (got {value!r})")
    return when


def event_arguments(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``track()`` keyword arguments from an event object in camelCase or snake_case.

    Raises ValidationError for an unknown or repeated field, or an unreadable date.
    """
    kwargs: dict[str, Any] = {}
    for key, value in obj.items():
        name = _FIELDS.get(key)
        if name is None:
            raise ValidationError(key, "unknown field")
        if name in kwargs:
            raise ValidationError(name, "given twice (in camelCase and snake_case)")
        kwargs[name] = value
    for name in [name for name, value in kwargs.items() if value is None]:
        if name not in ("identify_id", "event_name"):
            del kwargs[name]  # null means "not given"; track() will name missing ones
    if "date" in kwargs:
        kwargs["date"] = _date(kwargs["date"])
    kwargs.setdefault("identify_id", None)
    kwargs.setdefault("event_name", None)
    return kwargs
