"""Bad input and hostile answers.

track() with any input either raises ValidationError (a ValueError naming the field) or
the event arrives at FakePX carrying exactly what API.md's wire rules say. The expected
wire form is built alongside every generated value, from the rules, not from the code.

Then the answers: HTML, empty, garbage and huge bodies, a server that stalls or closes
mid-answer. None may kill a worker or hang flush() past its timeout, and each ends as a
counted delivery, retry or failure with the documented reason.
"""

from __future__ import annotations

import enum
import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker import CustomEvent, DeliveryError, Tracker, UserType, ValidationError
from tracker.testing import FakePX

from ._support import API_KEY, PRODUCT_KEY

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# -- expectations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exp:
    """What a generated value must become: ``ok`` (sent as ``wire``), ``bad`` (a
    ValidationError), or ``either`` (ValidationError, or sent as ``wire``)."""

    kind: str
    wire: Any = None
    container: bool = False  # a dict/list: a JSON string at the top level of a mapping


def ok(wire: Any) -> Exp:
    return Exp("ok", wire)


BAD = Exp("bad")


def combine(exps: list[Exp], wire: Any) -> Exp:
    kinds = {e.kind for e in exps}
    kind = "bad" if "bad" in kinds else "either" if "either" in kinds else "ok"
    return Exp(kind, wire, container=True)


def text_exp(value: str) -> Exp:
    """Strings with lone surrogates cannot be UTF-8: refused, or sent as they are."""
    return Exp("either", value) if re.search("[\ud800-\udfff]", value) else ok(value)


class Matcher:
    """Compares equal to the wire values it describes (kept on the left of ``==``)."""

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return self.matches(other)

    def matches(self, other: object) -> bool:
        raise NotImplementedError


class IsoInstant(Matcher):
    """Equal to an ISO-8601 UTC string ("Z" or "+00:00") for the instant of ``moment``,
    to the millisecond (truncated or rounded)."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def matches(self, other: object) -> bool:
        if not isinstance(other, str) or not other.endswith(("Z", "+00:00")):
            return False
        try:
            parsed = datetime.fromisoformat(other.replace("Z", "+00:00"))
        except ValueError:
            return False
        return parsed.utcoffset() == timedelta(0) and abs(parsed - self.moment) < timedelta(
            milliseconds=1
        )

    def __repr__(self) -> str:
        return f"IsoInstant({self.moment.isoformat()})"


class IsoBeyondRange(Matcher):
    """An ISO-8601 UTC string for an instant Python's datetime cannot hold (year 0/10000)."""

    def matches(self, other: object) -> bool:
        pattern = r"[+-]?\d{4,}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|\+00:00)"
        return isinstance(other, str) and re.fullmatch(pattern, other) is not None

    def __repr__(self) -> str:
        return "IsoBeyondRange()"


class EpochMs(Matcher):
    """Equal to an int within a millisecond of ``micros`` microseconds since the epoch."""

    def __init__(self, micros: int) -> None:
        self.micros = micros

    def matches(self, other: object) -> bool:
        return (
            isinstance(other, int)
            and not isinstance(other, bool)
            and abs(other * 1000 - self.micros) < 1000
        )

    def __repr__(self) -> str:
        return f"EpochMs(~{self.micros / 1000})"


class Between(Matcher):
    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def matches(self, other: object) -> bool:
        return isinstance(other, int) and self.low <= other <= self.high

    def __repr__(self) -> str:
        return f"Between({self.low}, {self.high})"


class JsonOf(Matcher):
    """Equal to a compact JSON string whose content equals ``plain``."""

    def __init__(self, plain: Any) -> None:
        self.plain = plain

    def matches(self, other: object) -> bool:
        if not isinstance(other, str):
            return False
        try:
            loaded = json.loads(other)
        except ValueError:
            return False
        compact = {
            json.dumps(loaded, separators=(",", ":"), ensure_ascii=ascii) for ascii in (True, False)
        }
        return other in compact and self.plain == loaded

    def __repr__(self) -> str:
        return f"JsonOf({self.plain!r})"


class IsUuid4(Matcher):
    def matches(self, other: object) -> bool:
        try:
            return isinstance(other, str) and uuid.UUID(other).version == 4
        except ValueError:
            return False

    def __repr__(self) -> str:
        return "IsUuid4()"


def micros_since_epoch(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def datetime_exp(moment: datetime) -> Exp:
    if moment.tzinfo is None or moment.utcoffset() is None:
        return BAD
    try:
        moment.astimezone(timezone.utc)
    except OverflowError:
        return Exp("either", IsoBeyondRange())
    return ok(IsoInstant(moment))


def decimal_exp(value: Decimal) -> Exp:
    if not value.is_finite() or not math.isfinite(float(value)):
        return BAD  # JSON has no NaN or infinity
    return ok(float(value))


OMIT = object()  # the keyword is not passed at all


# -- strategies of (value, expectation) --------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Shape(enum.Enum):
    POINT = (1, 2)  # a tuple value: a nested value once converted
    BLOB = b"\x00"  # a value no JSON can hold


Pair = tuple[Any, Exp]
Pairs = st.SearchStrategy[Pair]

BLANKS = ["", " ", "\t\n", "\u3000", "\x1c", "\u2003 "]
texts: st.SearchStrategy[str] = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["é", "😀", "a\x00b", "null", "{}", '"quoted"', "a\\b", "\u2028"]),
    # lone surrogates: valid Python str, never valid UTF-8 (hypothesis drops them from a
    # mixed alphabet, hence the pieces)
    st.tuples(
        st.text(max_size=3),
        st.text(st.characters(codec=None, categories=["Cs"]), min_size=1, max_size=2),
        st.text(max_size=3),
    ).map("".join),
)
filled_texts = texts.filter(lambda s: bool(s.strip()))
blank_texts = st.one_of(st.sampled_from(BLANKS), st.text(" \t\n\r\x0b\x0c\u3000\u2003", max_size=4))


def as_text(value: str) -> Pair:
    return value, text_exp(value)


offsets = st.one_of(
    st.just(timezone.utc),
    st.builds(
        timezone,
        st.timedeltas(
            min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
        ),
    ),
)
aware_datetimes = st.datetimes(timezones=offsets)


def _enum_pair(member: enum.Enum) -> Pair:
    value = member.value
    if isinstance(value, tuple):
        return member, Exp("ok", list(value), container=True)
    if isinstance(value, bytes):
        return member, BAD
    return member, ok(value)


def _not_bad(pair: Pair) -> bool:
    return pair[1].kind != "bad"


valid_scalars: Pairs = st.one_of(
    texts.map(as_text),
    st.integers().map(lambda i: (i, ok(i))),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: (f, ok(f))),
    st.booleans().map(lambda b: (b, ok(b))),
    st.none().map(lambda n: (n, ok(None))),
    aware_datetimes.map(lambda d: (d, datetime_exp(d))),
    st.dates().map(lambda d: (d, ok(d.isoformat()))),
    st.decimals(allow_nan=False, allow_infinity=False)
    .map(lambda d: (d, decimal_exp(d)))
    .filter(_not_bad),
    st.just((Decimal("1e-400"), ok(0.0))),
    st.uuids().map(lambda u: (u, ok(str(u)))),
    st.sampled_from([Color.RED, Color.GREEN, Level.LOW, Level.HIGH, Shape.POINT]).map(_enum_pair),
)
invalid_scalars: Pairs = st.one_of(
    st.sampled_from([math.inf, -math.inf, math.nan]).map(lambda f: (f, BAD)),
    st.datetimes().map(lambda d: (d, BAD)),  # naive
    st.sampled_from(
        [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("1e400"), Decimal("-1e400")]
    ).map(lambda d: (d, BAD)),
    st.just((Shape.BLOB, BAD)),
    st.one_of(
        st.sets(st.integers(), max_size=2),
        st.frozensets(st.integers(), max_size=2),
        st.binary(max_size=4),
        st.builds(bytearray, st.binary(max_size=4)),
        st.complex_numbers(allow_nan=False, allow_infinity=False),
        st.builds(object),
    ).map(lambda v: (v, BAD)),
)

valid_nested_keys: Pairs = texts.map(as_text)  # any string names a nested key, "" too
any_nested_keys: Pairs = st.one_of(
    valid_nested_keys,
    st.one_of(st.integers(), st.none(), st.tuples(st.integers())).map(lambda k: (k, BAD)),
)


def _as_list(pairs: list[Pair]) -> Pair:
    return [v for v, _ in pairs], combine([e for _, e in pairs], [e.wire for _, e in pairs])


def _as_tuple(pairs: list[Pair]) -> Pair:
    value, exp = _as_list(pairs)
    return tuple(value), exp


def _as_dict(items: list[tuple[Pair, Pair]]) -> Pair:
    value = {k: v for (k, _), (v, _) in items}
    exps = [e for (_, ke), (_, ve) in items for e in (ke, ve)]
    return value, combine(exps, {k: ve.wire for (k, _), (_, ve) in items})


def _containers(keys: Pairs) -> Callable[[Pairs], Pairs]:
    def extend(children: Pairs) -> Pairs:
        return st.one_of(
            st.lists(children, max_size=4).map(_as_list),
            st.lists(children, max_size=4).map(_as_tuple),
            st.lists(st.tuples(keys, children), max_size=4, unique_by=lambda item: item[0][0]).map(
                _as_dict
            ),
        )

    return extend


valid_values: Pairs = st.recursive(valid_scalars, _containers(valid_nested_keys), max_leaves=8)
any_values: Pairs = st.recursive(
    st.one_of(valid_scalars, invalid_scalars), _containers(any_nested_keys), max_leaves=8
)


def top_level(pair: Pair) -> Pair:
    """At the top level of attributes/global_context, nested values become JSON strings."""
    value, exp = pair
    if exp.container:
        return value, Exp(exp.kind, JsonOf(exp.wire))
    return value, exp


valid_names: Pairs = st.one_of(
    st.text(min_size=1, max_size=12).map(as_text),
    st.sampled_from([" ", "a.b", "n" * 1024]).map(as_text),
)
any_names: Pairs = st.one_of(
    valid_names,
    st.sampled_from(["", "x" * 1025]).map(lambda k: (k, BAD)),
    st.one_of(st.integers(), st.none(), st.booleans(), st.tuples()).map(lambda k: (k, BAD)),
)


def mappings(names: Pairs, items: Pairs, max_size: int) -> Pairs:
    def build(entries: list[tuple[Pair, Pair]]) -> Pair:
        value, exp = _as_dict(entries)
        return value, Exp(exp.kind, exp.wire)  # the mapping itself is sent as an object

    return st.lists(
        st.tuples(names, items.map(top_level)), max_size=max_size, unique_by=lambda e: e[0][0]
    ).map(build)


def _many(n: int) -> Pair:
    value = {f"a{i}": i for i in range(n)}
    return value, (ok(dict(value)) if n <= 50 else BAD)


NOT_A_MAPPING: Pairs = st.sampled_from([["not", "a", "dict"], "text", 3, {1, 2}]).map(
    lambda v: (v, BAD)
)
OMITTED: Pairs = st.just((OMIT, ok(None)))
NONE: Pairs = st.just((None, ok(None)))


def required_text(value: object) -> Exp:
    if isinstance(value, str):
        return BAD if not value.strip() else text_exp(value)
    return BAD


VALID_USER_TYPES = ["LEAD", "USER", "VISITOR", "EMPTY_USER_TYPE"]


def user_type_exp(value: object) -> Exp:
    if value is OMIT:
        return ok("USER")
    if isinstance(value, UserType):
        return ok(value.value)
    if isinstance(value, str) and value in VALID_USER_TYPES:
        return ok(value)
    if isinstance(value, str) and value.upper() in VALID_USER_TYPES:
        return Exp("either", value.upper())  # lenient spellings are a design choice
    return BAD


def optional_text(value: object) -> Exp:
    if value is OMIT or value is None:
        return ok(None)
    if isinstance(value, str):
        return required_text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return Exp("either", str(value))
    return BAD


INT64 = 2**63


def date_exp(value: object) -> Exp:
    if value is OMIT or value is None:
        return ok("now")
    if isinstance(value, bool):
        return BAD
    if isinstance(value, int):
        return ok(value) if -INT64 <= value < INT64 else BAD
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            return BAD
        return ok(EpochMs(micros_since_epoch(value)))
    return BAD


def _with(exp: Callable[[Any], Exp]) -> Callable[[Any], Pair]:
    return lambda value: (value, exp(value))


def _generated_or(value: object) -> Exp:
    return ok("generated") if value is OMIT or value is None else required_text(value)


def _default_or(value: object) -> Exp:
    return ok(PRODUCT_KEY) if value is OMIT or value is None else required_text(value)


# Per track() argument: its wire name, a strategy of valid values and one of invalid ones
# ("either" values, which may be refused, count as valid: refusing them is allowed).
FIELDS: dict[str, tuple[str, Pairs, Pairs]] = {
    "identify_id": (
        "identifyId",
        st.one_of(filled_texts.map(as_text), st.integers().map(lambda i: (i, ok(str(i))))),
        st.one_of(blank_texts, st.booleans(), st.none(), st.floats(), st.binary(max_size=3)).map(
            lambda v: (v, BAD)
        ),
    ),
    "event_name": (
        "eventName",
        st.one_of(
            filled_texts.map(as_text), st.integers(1990, 2000).map(lambda n: ("e" * n, ok("e" * n)))
        ),
        st.one_of(
            blank_texts,
            st.integers(2001, 2010).map(lambda n: "e" * n),
            st.none(),
            st.integers(),
            st.builds(object),
        ).map(lambda v: (v, BAD)),
    ),
    "user_type": (
        "userType",
        st.sampled_from([OMIT, *VALID_USER_TYPES, *UserType, "user", "Lead"]).map(
            _with(user_type_exp)
        ),
        st.one_of(st.sampled_from(["ADMIN", "", " USER", None, 1]), texts)
        .map(_with(user_type_exp))
        .filter(lambda p: p[1].kind == "bad"),
    ),
    "property_key": (
        "propertyKey",
        st.one_of(st.just(OMIT), st.none(), filled_texts).map(_with(_default_or)),
        st.one_of(blank_texts, st.integers(), st.booleans()).map(lambda v: (v, BAD)),
    ),
    "date": (
        "date",
        st.one_of(
            st.just(OMIT),
            st.none(),
            st.integers(-INT64, INT64 - 1),
            st.sampled_from([INT64 - 1, -INT64, 0]),
            aware_datetimes,
        ).map(_with(date_exp)),
        st.one_of(
            st.sampled_from([INT64, -INT64 - 1, 2**80, True, False]),
            st.datetimes(),
            st.dates(),
            st.floats(),
            st.text(max_size=10),
            st.decimals(allow_nan=False, allow_infinity=False),
        ).map(lambda v: (v, BAD)),
    ),
    "event_id": (
        "eventId",
        st.one_of(st.just(OMIT), st.none(), filled_texts).map(_with(_generated_or)),
        st.one_of(blank_texts, st.integers(), st.uuids()).map(lambda v: (v, BAD)),
    ),
    "attributes": (
        "attributes",
        st.one_of(NONE, OMITTED, mappings(valid_names, valid_values, 6), st.just(50).map(_many)),
        st.one_of(
            mappings(any_names, any_values, 6),
            st.sampled_from([51, 80]).map(_many),
            NOT_A_MAPPING,
        ),
    ),
    "global_context": (
        "globalContext",
        st.one_of(NONE, OMITTED, mappings(valid_names, valid_values, 3)),
        st.one_of(mappings(any_names, any_values, 3), NOT_A_MAPPING),
    ),
    **{
        argument: (
            wire_name,
            st.one_of(st.just(OMIT), st.none(), filled_texts).map(_with(optional_text)),
            st.one_of(
                blank_texts, st.integers(), st.booleans(), st.floats(), st.binary(max_size=2)
            ).map(_with(optional_text)),
        )
        for argument, wire_name in {
            "account_id": "accountId",
            "session_id": "sessionId",
            "event_type": "eventType",
            "url": "url",
            "referrer": "referrer",
            "remote_host": "remoteHost",
        }.items()
    },
}


@dataclass
class Call:
    """One generated track() call and, per argument, what must become of it."""

    positional: tuple[Any, Any]
    keywords: dict[str, Any]
    expect: dict[str, tuple[str, Exp]]  # track() argument -> (wire name, expectation)


@st.composite
def track_calls(draw: st.DrawFn, invalid: bool) -> Call:
    """A track() call with valid arguments; with ``invalid``, one argument (any) drawn
    from its invalid values (which may turn out valid, e.g. an empty mapping)."""
    spoiled = draw(st.sampled_from(list(FIELDS))) if invalid else None
    values: dict[str, Any] = {}
    expect: dict[str, tuple[str, Exp]] = {}
    for argument, (wire_name, valid, bad) in FIELDS.items():
        value, exp = draw(bad if argument == spoiled else valid)
        values[argument] = value
        expect[argument] = (wire_name, exp)
    positional = (values.pop("identify_id"), values.pop("event_name"))
    keywords = {k: v for k, v in values.items() if v is not OMIT}
    return Call(positional, keywords, expect)


# -- the property ------------------------------------------------------------------------------


@dataclass
class Harness:
    px: FakePX
    tracker: Tracker
    errors: dict[str, DeliveryError]


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    errors: dict[str, DeliveryError] = {}

    def on_error(event: CustomEvent, error: DeliveryError) -> None:
        errors[event.event_id] = error

    with FakePX() as px:
        with Tracker(
            API_KEY,
            product_key=PRODUCT_KEY,
            base_url=px.url,
            sync_mode=True,
            max_retries=0,
            on_error=on_error,
        ) as t:
            yield Harness(px, t, errors)


def field_matches(field: str, argument: str) -> bool:
    return field == argument or field.startswith((argument + "[", argument + "."))


def track_or_refusal(
    t: Tracker, positional: tuple[Any, ...], keywords: dict[str, Any]
) -> tuple[Optional[str], Optional[ValidationError]]:
    try:
        return t.track(*positional, **keywords), None
    except ValidationError as exc:
        return None, exc


def check_call(h: Harness, call: Call) -> None:
    h.px.clear()
    h.errors.clear()
    bad = {a for a, (_, e) in call.expect.items() if e.kind == "bad"}
    maybe = {a for a, (_, e) in call.expect.items() if e.kind == "either"}
    before = time.time_ns() // 1_000_000
    returned, refusal = track_or_refusal(h.tracker, call.positional, call.keywords)
    after = time.time_ns() // 1_000_000
    if refusal is not None:
        assert isinstance(refusal, ValueError)
        assert bad | maybe, f"valid input refused: {refusal!r}"
        assert any(field_matches(refusal.field, a) for a in bad | maybe), (
            f"ValidationError names {refusal.field!r}; the bad fields are {sorted(bad | maybe)}"
        )
        return
    assert not bad, f"accepted invalid {sorted(bad)}"
    assert returned is not None
    assert returned not in h.errors, f"accepted, then not delivered: {h.errors[returned]}"
    (received,) = h.px.events
    expected: dict[str, Any] = {}
    for argument, (wire_name, exp) in call.expect.items():
        wire = exp.wire
        if argument == "date" and wire == "now":
            wire = Between(before, after)
        elif argument == "event_id" and wire == "generated":
            assert IsUuid4() == returned
            wire = returned
        if wire is not None:
            expected[wire_name] = wire
    assert received["eventId"] == returned
    assert expected == received


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class TestTrackProperty:
    @PROPERTY
    @given(call=track_calls(invalid=False))
    def test_valid_input_arrives_exactly_as_the_wire_rules_say(
        self, harness: Harness, call: Call
    ) -> None:
        check_call(harness, call)

    @PROPERTY
    @given(call=track_calls(invalid=True))
    def test_an_invalid_argument_is_refused_naming_its_field_or_all_arrives_exactly(
        self, harness: Harness, call: Call
    ) -> None:
        check_call(harness, call)


class TestTrackRefusesWhatCannotBeSent:
    """Inputs at the edges of what JSON, UTF-8 and datetime can hold: each must be refused
    naming its field (never queued and then failed, never another exception), or, where
    PX could hold it, arrive intact."""

    CASES: list[tuple[str, Callable[[], dict[str, Any]], str, bool]] = [
        (
            "decimal-overflowing-float",
            lambda: {"attributes": {"d": Decimal("1e400")}},
            "attributes",
            False,
        ),
        (
            "nested-decimal-overflowing-float",
            lambda: {"attributes": {"d": [Decimal("-1e400")]}},
            "attributes",
            False,
        ),
        ("int-over-4300-digits", lambda: {"attributes": {"n": 10**5000}}, "attributes", False),
        ("identify-id-over-4300-digits", lambda: {"identify_id": 10**5000}, "identify_id", False),
        (
            "lone-surrogate-in-event-name",
            lambda: {"event_name": "bad \ud800 name"},
            "event_name",
            True,
        ),
        (
            "lone-surrogate-in-attribute",
            lambda: {"attributes": {"s": "\udc80"}},
            "attributes",
            True,
        ),
        (
            "datetime-min-east-of-utc",
            lambda: {"attributes": {"t": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))}},
            "attributes",
            True,
        ),
        (
            "datetime-max-west-of-utc",
            lambda: {
                "attributes": {
                    "t": datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))
                }
            },
            "attributes",
            True,
        ),
        ("list-containing-itself", lambda: {"attributes": {"l": _cyclic()}}, "attributes", False),
    ]

    @pytest.mark.parametrize(
        ("make", "field", "may_arrive"),
        [pytest.param(make, field, may, id=name) for name, make, field, may in CASES],
    )
    def test_is_a_validation_error_naming_the_field_or_arrives_intact(
        self, harness: Harness, make: Callable[[], dict[str, Any]], field: str, may_arrive: bool
    ) -> None:
        harness.px.clear()
        harness.errors.clear()
        kwargs: dict[str, Any] = {"identify_id": "u", "event_name": "e", **make()}
        positional = (kwargs.pop("identify_id"), kwargs.pop("event_name"))
        returned, refusal = track_or_refusal(harness.tracker, positional, kwargs)
        if refusal is not None:
            assert field_matches(refusal.field, field), refusal.field
            return
        assert may_arrive, "accepted by track(), so it was queued: it can never be sent"
        assert returned not in harness.errors, f"accepted, then failed: {harness.errors[returned]}"
        assert [e["eventId"] for e in harness.px.events] == [returned]


def _cyclic() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop
