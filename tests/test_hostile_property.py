"""Property: track()'s validation is total over hostile values.

Given any nesting of subclasses whose methods lie or raise, ints past JSON's digit limit,
lying Mappings, cycles and broken tzinfos, the validation either raises ValidationError
naming one of track()'s fields, with a bounded message, or returns an event made only of
plain built-in values whose wire form encodes as the transport encodes it.
"""

from __future__ import annotations

import enum
import json
from datetime import timedelta, timezone
from decimal import Decimal
from typing import Any, Union

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker import CustomEvent, UserType, ValidationError
from tracker._event import make_event

from .hostile import (
    BigInt,
    EmptyStrInt,
    Endless,
    Hidden,
    LyingDict,
    LyingList,
    LyingNanFloat,
    LyingStr,
    Opaque,
    Pairs,
    Ping,
    Pong,
    RaisingInt,
    RaisingMapping,
    RaisingTz,
    SelfEnum,
    SelfStr,
    ShownEnum,
    SneakyDatetime,
    SurrogateInt,
    WeirdDecimal,
    WeirdFloat,
    WildTz,
    assert_plain,
)

# make_event's arguments after the property key and the clock, in order.
FIELDS = (
    "identify_id",
    "event_name",
    "attributes",
    "user_type",
    "account_id",
    "property_key",
    "date",
    "event_id",
    "session_id",
    "event_type",
    "global_context",
    "url",
    "referrer",
    "remote_host",
)


def attempt(given: dict[str, Any]) -> Union[CustomEvent, ValidationError]:
    """The event make_event() builds from ``given``, or the ValidationError it raises."""
    args = {"identify_id": "u1", "event_name": "e", "user_type": "USER", **given}
    try:
        return make_event("AP-1", lambda: 1_700_000_000_000, *(args.get(n) for n in FIELDS))
    except ValidationError as error:
        return error


def enum_holding(value: Any) -> enum.Enum:
    member = ShownEnum("Holder", ["X"]).X  # type: ignore[attr-defined]
    member._value_ = value
    return member


def cycle_through(value: Any) -> list[Any]:
    loop: list[Any] = [value]
    loop.append({"back": loop})
    return loop


texts = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["", " ", "\u3000", "\ud800", "a\udc80b", "é", "USER", "lead"]),
)
ints = st.one_of(
    st.integers(),
    # Built when drawn: a strategy holding an int past 4,300 digits cannot even be shown.
    st.sampled_from([4299, 4300, 5000]).map(lambda digits: 10**digits),
    st.sampled_from([63, 2001, 14_000, 20_000]).map(lambda bits: -(2**bits)),
)
zones = st.one_of(
    st.none(),
    st.just(timezone.utc),
    st.builds(timezone, st.timedeltas(timedelta(hours=-23), timedelta(hours=23))),
    st.builds(RaisingTz),
    st.builds(WildTz),
)
leaves = st.one_of(
    texts,
    texts.map(SelfStr),
    texts.map(LyingStr),
    ints,
    ints.map(BigInt),
    ints.map(EmptyStrInt),
    ints.map(SurrogateInt),
    ints.map(RaisingInt),
    st.floats(),
    st.floats().map(WeirdFloat),
    st.floats().map(LyingNanFloat),
    st.decimals(),
    st.decimals().map(WeirdDecimal),
    st.sampled_from(["sNaN", "-Infinity", "1e400", "9e999999999", "-0", "1e-999999999"]).map(
        Decimal
    ),
    st.booleans(),
    st.none(),
    st.datetimes(timezones=zones),
    st.datetimes(timezones=zones).map(
        lambda d: SneakyDatetime(
            d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond, d.tzinfo
        )
    ),
    st.dates(),
    st.uuids(),
    st.sampled_from([SelfEnum.A, Ping.A, Pong.B, Hidden.NAME, UserType.LEAD]),
    st.builds(Opaque),
    st.binary(max_size=2),
)
keys = st.one_of(
    texts, texts.map(SelfStr), texts.map(LyingStr), st.integers(), st.none(), st.builds(Opaque)
)


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.lists(children, max_size=3).map(LyingList),
        st.dictionaries(keys, children, max_size=3),
        st.dictionaries(keys, children, max_size=3).map(LyingDict),
        st.builds(
            Pairs,
            st.lists(st.one_of(st.tuples(keys, children), children), max_size=3),
            st.integers(0, 4),
        ),
        st.builds(Endless),
        st.builds(RaisingMapping),
        children.map(enum_holding),
        children.map(cycle_through),
    )


values = st.recursive(leaves, containers, max_leaves=8)
texty = st.one_of(texts, texts.map(SelfStr), texts.map(LyingStr), leaves)
calls = st.fixed_dictionaries(
    {},
    optional={
        "identify_id": texty,
        "event_name": texty,
        "user_type": st.one_of(st.sampled_from(["USER", "lead", UserType.LEAD]), texty),
        "date": st.one_of(st.none(), leaves),
        "attributes": st.one_of(st.none(), values),
        "global_context": st.one_of(st.none(), values),
        "account_id": st.one_of(st.none(), texty),
        "event_id": st.one_of(st.none(), texty),
        "url": st.one_of(st.none(), texty),
    },
)

# The required fields valid, so that the values get the examples.
names = st.one_of(st.text(min_size=1, max_size=4), st.text(min_size=1, max_size=4).map(SelfStr))
value_calls = st.fixed_dictionaries(
    {
        "attributes": st.one_of(
            st.dictionaries(names, values, max_size=4),
            st.dictionaries(names, values, max_size=4).map(LyingDict),
            values,
        )
    },
    optional={"global_context": st.dictionaries(names, values, max_size=4)},
)
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class TestValidationIsTotal:
    @PROPERTY
    @given(call=calls)
    def test_refuses_naming_a_field_or_returns_an_event_that_encodes(
        self, call: dict[str, Any]
    ) -> None:
        check(call)

    @PROPERTY
    @given(call=value_calls)
    def test_attribute_values_are_refused_or_encode(self, call: dict[str, Any]) -> None:
        check(call)


def check(call: dict[str, Any]) -> None:
    event = attempt(call)
    if isinstance(event, ValidationError):
        assert event.field.split("[", 1)[0] in FIELDS, event.field
        assert len(event.rule) < 300, event.rule
        return
    wire = event.to_dict()
    json.dumps(wire, ensure_ascii=False, allow_nan=False).encode("utf-8")
    assert_plain(wire)
