"""Caller-supplied values made plain JSON data in the caller's thread, or a ValidationError.

Total by construction: what it returns is built only of plain ``str``/``int``/``float``/
``bool``/``None``/``dict``/``list`` that ``json.dumps(..., allow_nan=False)`` and UTF-8
always encode, and it raises nothing but ValidationError. Subclass instances are read
through their base type's own methods (``str.__str__``, ``int.__index__``,
``float.__float__``...), never their overrides, and an error message describes a value by
its type and a bounded, code-free rendering, never by calling its ``repr()``. The code a
value's type may legitimately run (a Mapping's ``items()``, a tzinfo's ``utcoffset()``, an
Enum's ``value``) runs inside a guard that turns its failure into a ValidationError.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping
from datetime import date as Date
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Optional, TypeVar
from uuid import UUID

from tracker.errors import ValidationError

MAX_ATTRIBUTE_NAME = 1024
MAX_NESTING = 32
# Python refuses to convert ints of more digits than sys.get_int_max_str_digits() (4300
# by default, never below 640 when set) to text, so json.dumps refuses them too. Below
# this many bits (603 digits) no setting can refuse an int; past it, converting tells.
SAFE_INT_BITS = 2000
_SHOWN = 40  # characters of a string shown in an error message

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
_T = TypeVar("_T")

# The name of a type as its class statement set it, whatever a metaclass makes
# ``__name__`` return.
_type_name: Callable[[type], str] = type.__dict__["__name__"].__get__


def type_name(value: object) -> str:
    return _type_name(type(value))


def label(value: object) -> Optional[str]:
    """A short rendering of a str, int or float that runs none of the value's own code."""
    kind = type(value)
    if value is None or kind is bool:
        return repr(value)
    if issubclass(kind, int):
        number = int.__index__(value)  # type: ignore[arg-type]
        return int.__repr__(number) if number.bit_length() <= 64 else None
    if issubclass(kind, float):
        return float.__repr__(value)
    if issubclass(kind, str):
        text = str.__str__(value)
        shown = str.__repr__(text[:_SHOWN])
        return shown + "..." if len(text) > _SHOWN else shown
    return None


def describe(value: object) -> str:
    """``value`` for an error message: its type and, when it is short and safe, itself."""
    name = type_name(value)
    if issubclass(type(value), int) and type(value) is not bool:
        bits = int.__index__(value).bit_length()  # type: ignore[arg-type]
        if bits > 64:
            return f"{name} of {bits} bits"
    shown = label(value)
    return name if shown is None else f"{name} {shown}"


def key_path(path: str, key: object) -> str:
    shown = label(key)
    return f"{path}[{shown if shown is not None else '<' + type_name(key) + '>'}]"


def guarded(path: str, what: str, call: Callable[..., _T], *args: object) -> _T:
    """``call(*args)`` for code of the value's own type, its failure a ValidationError."""
    try:
        return call(*args)
    except Exception as exc:  # whatever the caller's code raises is a reason to refuse it
        raise ValidationError(path, f"could not be read: {what} raised {type_name(exc)}") from exc


def is_text(value: str) -> bool:
    """False when ``value`` holds lone surrogates: no UTF-8, so no JSON body, has them."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8(field: str, value: str) -> str:
    """``value`` (a plain str), or ValidationError when it is not valid text."""
    if not is_text(value):
        raise ValidationError(field, "contains lone surrogates: not valid text")
    return value


def int_digits(field: str, number: int) -> str:
    """A plain int in decimal, or ValidationError past Python's (and so JSON's) limit."""
    try:
        return int.__repr__(number)
    except ValueError:  # sys.get_int_max_str_digits() refuses it, json.dumps would too
        raise ValidationError(
            field, f"is too large an integer for JSON (got int of {number.bit_length()} bits)"
        ) from None


def plain_int(field: str, value: int) -> int:
    """An int (or int subclass) as a plain int that JSON can hold, or ValidationError."""
    number = value if type(value) is int else int.__index__(value)
    if number.bit_length() > SAFE_INT_BITS:
        int_digits(field, number)
    return number


def plain_float(field: str, value: float) -> float:
    number = value if type(value) is float else float.__float__(value)
    if math.isfinite(number):
        return number
    raise ValidationError(field, f"must be a finite number; JSON has no {float.__repr__(number)}")


def aware_delta(field: str, value: datetime) -> timedelta:
    """The time from the epoch to an aware datetime, or ValidationError."""
    offset = guarded(field, "its tzinfo", datetime.utcoffset, value)
    if offset is None:
        raise ValidationError(
            field, f"must be timezone-aware; naive datetimes are ambiguous (got {describe(value)})"
        )
    return guarded(field, "its tzinfo", datetime.__sub__, value, _EPOCH)


def epoch_ms(field: str, value: datetime) -> int:
    return aware_delta(field, value) // _ONE_MS


def iso_utc(path: str, value: datetime) -> str:
    try:
        utc = _EPOCH + aware_delta(path, value)
    except OverflowError:
        raise ValidationError(path, "is out of datetime's range in UTC") from None
    return datetime.isoformat(utc, timespec="milliseconds")[:-6] + "Z"  # "+00:00" -> "Z"


def plain_decimal(path: str, value: Decimal) -> float:
    if Decimal.is_finite(value):
        number = guarded(path, "float()", Decimal.__float__, value)
        if math.isfinite(number):
            return number
    text = Decimal.__str__(value)
    shown = text[:_SHOWN] + "..." if len(text) > _SHOWN else text
    raise ValidationError(path, f"must be a finite number that fits a float (got {shown})")


def read_pairs(path: str, mapping: Mapping[Any, Any], limit: Optional[int]) -> list[Any]:
    """The (name, value) pairs of a Mapping other than a plain dict, as it yields them.

    Reads no more than its ``len()`` (or than ``limit``) plus one, so one that lies about
    its size or never ends is refused, not believed or read forever.
    """
    size: int = guarded(path, "len()", len, mapping)
    bound = max(size, limit or 0) + 1
    pairs: list[Any] = []
    items: Iterable[Any] = guarded(path, "items()", lambda: iter(mapping.items()))
    end = object()
    while len(pairs) < bound:
        pair = guarded(path, "items()", next, items, end)
        if pair is end:
            break
        pairs.append(pair)
    if limit is not None and len(pairs) > limit:
        raise ValidationError(path, f"at most {limit} are allowed (got more than {limit})")
    if len(pairs) > size:
        raise ValidationError(path, f"yields more items than its len() says ({size})")
    for index, pair in enumerate(pairs):
        if not issubclass(type(pair), tuple) or tuple.__len__(pair) != 2:
            raise ValidationError(
                path, f"items() must yield (name, value) pairs (got {describe(pair)})"
            )
        pairs[index] = (tuple.__getitem__(pair, 0), tuple.__getitem__(pair, 1))
    return pairs


def name_text(path: str, key: object) -> str:
    """A Mapping key as the plain str it holds, or ValidationError."""
    if type(key) is not str:
        if not issubclass(type(key), str):
            raise ValidationError(
                key_path(path, key), f"names must be strings (got {describe(key)})"
            )
        key = str.__str__(key)
    return utf8(path, key)


def to_plain(path: str, value: Any, seen: set[int], depth: int) -> Any:
    """``value`` as plain JSON data (str/int/float/bool/None/dict/list), or ValidationError."""
    kind = type(value)
    if kind is str:
        return utf8(path, value)
    if kind is int:
        return value if value.bit_length() <= SAFE_INT_BITS else plain_int(path, value)
    if value is None or kind is bool:
        return value
    if kind is float:
        return plain_float(path, value)
    if issubclass(kind, (enum.Enum, Mapping, list, tuple)):
        return _nested(path, value, seen, depth)
    if issubclass(kind, str):
        return utf8(path, str.__str__(value))
    if issubclass(kind, int):
        return plain_int(path, value)
    if issubclass(kind, float):
        return plain_float(path, value)
    if issubclass(kind, datetime):
        return iso_utc(path, value)
    if issubclass(kind, Date):
        return Date.isoformat(value)
    if issubclass(kind, Decimal):
        return plain_decimal(path, value)
    if issubclass(kind, UUID):
        return to_plain(path, guarded(path, "str()", UUID.__str__, value), seen, depth)
    raise ValidationError(
        path,
        f"unsupported value type {type_name(value)}; use str, int, float, bool, None, "
        "an aware datetime, date, Decimal, UUID, Enum, or a dict/list/tuple of those",
    )


def _nested(path: str, value: Any, seen: set[int], depth: int) -> Any:
    """An Enum's value, or a container's items, made plain; cycles and depth bounded."""
    if depth >= MAX_NESTING:
        raise ValidationError(path, f"is nested deeper than {MAX_NESTING} levels")
    if id(value) in seen:
        raise ValidationError(path, "contains itself (a reference cycle)")
    seen.add(id(value))
    try:
        kind = type(value)
        if issubclass(kind, enum.Enum):
            return to_plain(path, guarded(path, "its value", _enum_value, value), seen, depth + 1)
        if issubclass(kind, Mapping):
            out: dict[str, Any] = {}
            pairs = dict.items(value) if kind is dict else read_pairs(path, value, None)
            for key, item in pairs:
                name = name_text(path, key)
                out[name] = to_plain(key_path(path, name), item, seen, depth + 1)
            return out
        # What a list or tuple holds, as JSON would send it: not what an overridden
        # __iter__ says, and not changed by the items' own code while they are read.
        items = list.copy(value) if issubclass(kind, list) else tuple.__iter__(value)
        return [to_plain(f"{path}[{i}]", item, seen, depth + 1) for i, item in enumerate(items)]
    finally:
        seen.discard(id(value))


def _enum_value(member: enum.Enum) -> Any:
    return member.value


def convert(path: str, value: Any) -> Any:
    """A top-level attribute value that is not already a flat JSON scalar."""
    plain = to_plain(path, value, set(), 0)
    if type(plain) is dict or type(plain) is list:
        # PX stores nested values as strings; encoding them here is also what proves
        # they can be encoded, in the caller's thread.
        return json.dumps(plain, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return plain


def clean_mapping(field: str, mapping: object, limit: Optional[int]) -> Optional[dict[str, Any]]:
    """A copy of ``mapping`` with every value made PX-ready, or ValidationError."""
    if mapping is None:
        return None
    pairs: Iterable[tuple[Any, Any]]
    if type(mapping) is dict:
        if limit is not None and len(mapping) > limit:
            raise ValidationError(field, f"at most {limit} are allowed (got {len(mapping)})")
        pairs = mapping.items()
    elif issubclass(type(mapping), Mapping):
        pairs = read_pairs(field, mapping, limit)  # type: ignore[arg-type]
    else:
        raise ValidationError(field, f"must be a dict of names to values (got {describe(mapping)})")
    out: dict[str, Any] = {}
    for name, value in pairs:
        key = name
        if type(key) is not str or not key or len(key) > MAX_ATTRIBUTE_NAME:
            key = _attribute_name(field, key)
        elif not key.isascii():
            utf8(field, key)
        # Flat plain values, the common case, are checked inline: a call per attribute
        # is a measurable share of track().
        kind = type(value)
        if kind is str:
            out[key] = value if value.isascii() else utf8(key_path(field, key), value)
        elif (
            value is None
            or kind is bool
            or (kind is int and value.bit_length() <= SAFE_INT_BITS)
            or (kind is float and math.isfinite(value))
        ):
            out[key] = value
        else:
            out[key] = convert(key_path(field, key), value)
    return out


def _attribute_name(field: str, key: object) -> str:
    text = name_text(field, key)
    if not text:
        raise ValidationError(field, "names must not be empty")
    if len(text) > MAX_ATTRIBUTE_NAME:
        raise ValidationError(
            key_path(field, text),
            f"names must be at most {MAX_ATTRIBUTE_NAME} characters (got {len(text)})",
        )
    return text
