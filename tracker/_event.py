"""The custom event: its model, its validation in the caller's thread, and its wire form."""

from __future__ import annotations

import enum
import json
import math
import os
import random
from collections.abc import Mapping
from datetime import date as Date
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Optional
from uuid import UUID

import attrs

from tracker.errors import ValidationError

MAX_EVENT_NAME = 2000
MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_NAME = 1024
MAX_NESTING = 32
_INT64 = 2**63
# json refuses ints of more than sys.get_int_max_str_digits() (4300) decimal digits.
_MAX_INT_BITS = 14_000

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


class UserType(str, enum.Enum):
    """PX's ``userType``: who the ``identifyId`` belongs to."""

    LEAD = "LEAD"
    USER = "USER"
    VISITOR = "VISITOR"
    EMPTY_USER_TYPE = "EMPTY_USER_TYPE"


# Plain strings, UserType members (equal and equally hashed) and lower-case spellings
# map to the canonical wire value in one dict lookup; other spellings after upper().
_USER_TYPES: dict[str, str] = {}
for _member in UserType:
    _USER_TYPES[_member.value] = _member.value
    _USER_TYPES[_member.value.lower()] = _member.value


@attrs.frozen(kw_only=True)
class CustomEvent:
    """One PX custom event, validated; ``to_dict()`` is what goes over the wire.

    Build one through ``Tracker.track()`` (or ``make_event``), which checks every field;
    the class itself trusts its arguments.
    """

    identify_id: str
    event_name: str
    property_key: str
    user_type: str = UserType.USER.value
    date: int
    event_id: str
    attributes: Optional[dict[str, Any]] = None
    account_id: Optional[str] = None
    session_id: Optional[str] = None
    event_type: Optional[str] = None
    global_context: Optional[dict[str, Any]] = None
    url: Optional[str] = None
    referrer: Optional[str] = None
    remote_host: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """The camelCase body PX expects, fields that are None left out."""
        wire: dict[str, Any] = {
            "eventId": self.event_id,
            "identifyId": self.identify_id,
            "propertyKey": self.property_key,
            "date": self.date,
            "userType": self.user_type,
            "eventName": self.event_name,
        }
        for key, value in (
            ("eventType", self.event_type),
            ("sessionId", self.session_id),
            ("accountId", self.account_id),
            ("globalContext", self.global_context),
            ("attributes", self.attributes),
            ("url", self.url),
            ("referrer", self.referrer),
            ("remoteHost", self.remote_host),
        ):
            if value is not None:
                wire[key] = value
        return wire


# Event ids need uniqueness, not secrecy: a private generator seeded from os.urandom is
# several times cheaper than uuid.uuid4(), immune to a user's random.seed(), and reseeded
# in a forked child so parent and child never produce the same ids.
_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)

_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_event_id() -> str:
    """A random (version 4) UUID as a string."""
    h = "%032x" % ((_ids.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _show(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def is_text(value: str) -> bool:
    """False when ``value`` holds lone surrogates: no UTF-8, so no JSON body, has them."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8(field: str, value: str) -> str:
    """``value``, or ValidationError when it is not valid text."""
    if not is_text(value):
        raise ValidationError(field, "contains lone surrogates: not valid text")
    return value


def _required_text(field: str, value: object) -> str:
    if type(value) is str:
        if value and not value.isspace():
            return _utf8(field, value)
        raise ValidationError(field, f"must be a non-empty string (got {value!r})")
    if value is None:
        raise ValidationError(field, "is required (got None)")
    if isinstance(value, int) and not isinstance(value, bool) and field == "identify_id":
        if value.bit_length() > _MAX_INT_BITS:
            raise ValidationError(field, "is too large an integer")
        return str(value)
    if isinstance(value, str):
        return _required_text(field, str(value))
    raise ValidationError(field, f"must be a string (got {_show(value)})")


def _epoch_ms(field: str, value: object) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValidationError(
                field, f"must be timezone-aware; naive datetimes are ambiguous (got {value!r})"
            )
        value = (value - _EPOCH) // _ONE_MS
    elif isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            field, f"must be epoch milliseconds (int) or an aware datetime (got {_show(value)})"
        )
    if not -_INT64 <= value < _INT64:
        raise ValidationError(field, f"must fit in a signed 64-bit integer (got {value})")
    return int(value)


def _iso_utc(path: str, value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            path, f"datetimes must be timezone-aware; naive ones are ambiguous (got {value!r})"
        )
    try:
        text = value.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    except OverflowError:
        raise ValidationError(path, f"is out of datetime's range in UTC (got {value!r})") from None
    return text[:-6] + "Z"  # "+00:00" -> "Z"


def _plain(path: str, value: Any, seen: set[int], depth: int) -> Any:
    """``value`` as plain JSON data (str/int/float/bool/None/dict/list), or ValidationError."""
    kind = type(value)
    if kind is str:
        return _utf8(path, value)
    if kind is int and value.bit_length() > _MAX_INT_BITS:
        raise ValidationError(path, "is too large an integer for JSON")
    if value is None or kind is bool or kind is int:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        raise ValidationError(path, f"must be a finite number; JSON has no {value!r}")
    if isinstance(value, enum.Enum):
        return _plain(path, value.value, seen, depth)
    if isinstance(value, datetime):
        return _iso_utc(path, value)
    if isinstance(value, Date):
        return value.isoformat()
    if isinstance(value, Decimal):
        if value.is_finite() and math.isfinite(float(value)):
            return float(value)
        raise ValidationError(path, f"must be a finite number; JSON has no {value!r}")
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _plain(path, float(value), seen, depth)
    if isinstance(value, (Mapping, list, tuple)):
        if depth >= MAX_NESTING:
            raise ValidationError(path, f"is nested deeper than {MAX_NESTING} levels")
        if id(value) in seen:
            raise ValidationError(path, "contains itself (a reference cycle)")
        seen.add(id(value))
        try:
            if isinstance(value, Mapping):
                out: dict[str, Any] = {}
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise ValidationError(
                            f"{path}[{key!r}]", f"names must be strings (got {_show(key)})"
                        )
                    _utf8(path, key)
                    out[key] = _plain(f"{path}[{key!r}]", item, seen, depth + 1)
                return out
            return [_plain(f"{path}[{i}]", item, seen, depth + 1) for i, item in enumerate(value)]
        finally:
            seen.discard(id(value))
    raise ValidationError(
        path,
        f"unsupported value type {type(value).__name__}; use str, int, float, bool, None, "
        "an aware datetime, date, Decimal, UUID, Enum, or a dict/list/tuple of those",
    )


def _convert(path: str, value: Any) -> Any:
    """A top-level attribute value that is not already a flat JSON scalar."""
    plain = _plain(path, value, set(), 0)
    if isinstance(plain, (dict, list)):
        # PX stores nested values as strings; encoding them here is also what proves
        # they can be encoded, in the caller's thread.
        return json.dumps(plain, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return plain


def clean_mapping(field: str, mapping: object, limit: Optional[int]) -> Optional[dict[str, Any]]:
    """A copy of ``mapping`` with every value made PX-ready, or ValidationError."""
    if mapping is None:
        return None
    if not isinstance(mapping, Mapping):
        raise ValidationError(field, f"must be a dict of names to values (got {_show(mapping)})")
    if limit is not None and len(mapping) > limit:
        raise ValidationError(field, f"at most {limit} are allowed (got {len(mapping)})")
    out: dict[str, Any] = {}
    for name, value in mapping.items():
        key = name
        if type(key) is not str or not key or len(key) > MAX_ATTRIBUTE_NAME:
            if not isinstance(key, str):
                raise ValidationError(field, f"names must be strings (got {_show(key)})")
            if not key:
                raise ValidationError(field, "names must not be empty")
            if len(key) > MAX_ATTRIBUTE_NAME:
                raise ValidationError(
                    f"{field}[{key[:40]!r}...]",
                    f"names must be at most {MAX_ATTRIBUTE_NAME} characters (got {len(key)})",
                )
            key = str(key)
        if not key.isascii():
            _utf8(field, key)
        kind = type(value)
        if kind is str:
            out[key] = value if value.isascii() else _utf8(f"{field}[{key!r}]", value)
        elif (
            value is None
            or kind is bool
            or (kind is int and value.bit_length() <= _MAX_INT_BITS)
            or (kind is float and math.isfinite(value))
        ):
            out[key] = value
        else:
            out[key] = _convert(f"{field}[{key!r}]", value)
    return out


def make_event(
    default_property_key: Optional[str],
    now_ms: Callable[[], int],
    identify_id: object,
    event_name: object,
    attributes: object,
    user_type: object,
    account_id: object,
    property_key: object,
    date: object,
    event_id: object,
    session_id: object,
    event_type: object,
    global_context: object,
    url: object,
    referrer: object,
    remote_host: object,
) -> CustomEvent:
    """Validate the arguments of ``track()`` and build the event, or raise ValidationError.

    Positional on purpose: this is the hot path of every ``track()``.
    """
    # The common case (plain non-blank strings) is checked inline: a function call per
    # field is a measurable share of a call that should cost a few microseconds.
    if (
        type(identify_id) is str
        and identify_id.isascii()
        and identify_id
        and not identify_id.isspace()
    ):
        identify = identify_id
    else:
        identify = _required_text("identify_id", identify_id)
    if type(event_name) is str and event_name.isascii() and event_name and not event_name.isspace():
        name = event_name
    else:
        name = _required_text("event_name", event_name)
    if len(name) > MAX_EVENT_NAME:
        raise ValidationError(
            "event_name", f"must be at most {MAX_EVENT_NAME} characters (got {len(name)})"
        )
    wire_user_type = None
    if isinstance(user_type, str):
        wire_user_type = _USER_TYPES.get(user_type) or _USER_TYPES.get(user_type.upper())
    if wire_user_type is None:
        raise ValidationError(
            "user_type",
            f"must be one of LEAD, USER, VISITOR, EMPTY_USER_TYPE (got {_show(user_type)})",
        )
    if property_key is None:
        if default_property_key is None:
            raise ValidationError(
                "property_key",
                "is required: pass property_key= to track() or product_key= to Tracker()",
            )
        prop = default_property_key
    else:
        prop = _required_text("property_key", property_key)
    event = _new_event(CustomEvent)
    _set_identify_id(event, identify)
    _set_event_name(event, name)
    _set_property_key(event, prop)
    _set_user_type(event, wire_user_type)
    _set_date(event, now_ms() if date is None else _epoch_ms("date", date))
    _set_event_id(
        event, new_event_id() if event_id is None else _required_text("event_id", event_id)
    )
    _set_attributes(
        event,
        None if attributes is None else clean_mapping("attributes", attributes, MAX_ATTRIBUTES),
    )
    _set_account_id(event, None if account_id is None else _required_text("account_id", account_id))
    _set_session_id(event, None if session_id is None else _required_text("session_id", session_id))
    _set_event_type(event, None if event_type is None else _required_text("event_type", event_type))
    _set_global_context(
        event,
        None if global_context is None else clean_mapping("global_context", global_context, None),
    )
    _set_url(event, None if url is None else _required_text("url", url))
    _set_referrer(event, None if referrer is None else _required_text("referrer", referrer))
    _set_remote_host(
        event, None if remote_host is None else _required_text("remote_host", remote_host)
    )
    return event


# The frozen class's generated __init__ sets each of its 14 slots through
# object.__setattr__ and takes keyword arguments: half of the cost of make_event(). Setting
# the slots through their descriptors builds the same object in half the time; a test pins
# that every field is set and the result equals the one __init__ builds.
_new_event = object.__new__
_slots = {name: CustomEvent.__dict__[name].__set__ for name in attrs.fields_dict(CustomEvent)}
_set_identify_id = _slots.pop("identify_id")
_set_event_name = _slots.pop("event_name")
_set_property_key = _slots.pop("property_key")
_set_user_type = _slots.pop("user_type")
_set_date = _slots.pop("date")
_set_event_id = _slots.pop("event_id")
_set_attributes = _slots.pop("attributes")
_set_account_id = _slots.pop("account_id")
_set_session_id = _slots.pop("session_id")
_set_event_type = _slots.pop("event_type")
_set_global_context = _slots.pop("global_context")
_set_url = _slots.pop("url")
_set_referrer = _slots.pop("referrer")
_set_remote_host = _slots.pop("remote_host")
if _slots:  # a field added to CustomEvent must be set above too
    raise RuntimeError(f"CustomEvent fields not set by make_event: {sorted(_slots)}")
