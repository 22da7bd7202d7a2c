"""The custom event: its model, its validation in the caller's thread, and its wire form."""

from __future__ import annotations

import enum
import os
import random
from datetime import datetime
from typing import Any, Callable, Optional

import attrs

from tracker._values import clean_mapping, describe, epoch_ms, int_digits, is_text, utf8
from tracker.errors import ValidationError

# is_text is re-exported: the config checks its strings with it.
__all__ = ["CustomEvent", "UserType", "is_text", "make_event", "new_event_id"]

MAX_EVENT_NAME = 2000
MAX_ATTRIBUTES = 50
_INT64 = 2**63


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
# several times cheaper than uuid.uuid4() and immune to a user's random.seed(). A process
# must never continue a sequence it inherited: the generator is reseeded when the pid is
# not the one it was seeded in. Python's fork hooks cannot be relied on for that (uWSGI
# forks its workers from C, where they never run); the pid check costs one getpid().
_ids = random.Random()
_ids_pid = os.getpid()


def _reseed() -> None:
    global _ids_pid
    _ids.seed(os.urandom(32))
    _ids_pid = os.getpid()  # after seeding: no thread may draw from the inherited state


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)

_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_event_id() -> str:
    """A random (version 4) UUID as a string, never one another process produces too."""
    if os.getpid() != _ids_pid:
        _reseed()
    h = ((_ids.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _required_text(field: str, value: object) -> str:
    """A required string (an int too, for identify_id) as the plain str PX gets."""
    kind = type(value)
    if kind is str:
        text: str = value  # type: ignore[assignment]
    elif value is None:
        raise ValidationError(field, "is required (got None)")
    elif issubclass(kind, str):
        text = str.__str__(value)
    elif field == "identify_id" and issubclass(kind, int) and kind is not bool:
        text = int_digits(field, int.__index__(value))  # type: ignore[arg-type]
    else:
        raise ValidationError(field, f"must be a string (got {describe(value)})")
    if text and not text.isspace():
        return utf8(field, text)
    raise ValidationError(field, f"must be a non-empty string (got {describe(text)})")


def _epoch_ms(field: str, value: object) -> int:
    kind = type(value)
    if kind is int:
        number: int = value  # type: ignore[assignment]
    elif issubclass(kind, datetime):
        number = epoch_ms(field, value)  # type: ignore[arg-type]
    elif issubclass(kind, int) and kind is not bool:
        number = int.__index__(value)  # type: ignore[arg-type]
    else:
        raise ValidationError(
            field, f"must be epoch milliseconds (int) or an aware datetime (got {describe(value)})"
        )
    if not -_INT64 <= number < _INT64:
        raise ValidationError(
            field, f"must fit in a signed 64-bit integer (got {describe(number)})"
        )
    return number


def _user_type(value: object) -> str:
    """The wire spelling of a user type given other than as its exact upper-case str."""
    if issubclass(type(value), str):
        text = str.__str__(value)
        wire = _USER_TYPES.get(text) or _USER_TYPES.get(text.upper())
        if wire is not None:
            return wire
    raise ValidationError(
        "user_type", f"must be one of LEAD, USER, VISITOR, EMPTY_USER_TYPE (got {describe(value)})"
    )


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
    # The exact str, not a subclass: its hash and __eq__ are str's own.
    wire_user_type = _USER_TYPES.get(user_type) if type(user_type) is str else None
    if wire_user_type is None:
        wire_user_type = _user_type(user_type)
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
