"""track() with hostile values: a ValidationError naming the field, or an event that sends.

Subclasses whose ``__str__``, ``__repr__``, ``__len__``, ``__float__``, ``isascii`` or
``__eq__`` lie or raise, ints past JSON's digit limit, Mappings that lie about their size:
track() raises ValidationError (never another exception, never a message that itself
fails to build) or accepts an event made of plain built-in values that PX receives.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable

import pytest

from tracker import CustomEvent, Tracker, UserType, ValidationError
from tracker.testing import FakePX

from ._support import API_KEY, PRODUCT_KEY
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
    SneakyDatetime,
    SurrogateInt,
    WeirdDecimal,
    WeirdFloat,
    WildTz,
    assert_plain,
)

HUGE = 10**5000  # past the 4,300 digits Python converts to text by default


@pytest.fixture
def dry() -> Iterator[Tracker]:
    tracker = Tracker(API_KEY, product_key=PRODUCT_KEY, send=False, flush_at_exit=False)
    yield tracker
    tracker.shutdown(0)


@pytest.fixture
def arrive(
    fake_px: FakePX, make_tracker: Callable[..., Tracker]
) -> Callable[..., tuple[dict[str, Any], CustomEvent]]:
    """track() in sync mode: the body PX received and the event the callback got."""
    delivered: list[CustomEvent] = []
    failed: list[object] = []
    tracker = make_tracker(
        fake_px.url,
        sync_mode=True,
        on_success=delivered.append,
        on_error=lambda event, error: failed.append(error),
    )

    def send(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], CustomEvent]:
        fake_px.clear()
        delivered.clear()
        event_id = tracker.track(*args, **kwargs)
        assert failed == []
        (body,) = fake_px.events
        (event,) = delivered
        assert body["eventId"] == event_id == event.event_id
        return body, event

    return send


def refusal(tracker: Tracker, *args: Any, **kwargs: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        tracker.track(*args, **kwargs)
    error = info.value
    assert len(error.rule) < 300, error.rule  # bounded, whatever the value's size
    return error


class TestHugeInts:
    @pytest.mark.parametrize(
        ("attributes", "field"),
        [
            ({"n": BigInt(HUGE)}, "attributes['n']"),
            ({"n": [BigInt(HUGE)]}, "attributes['n'][0]"),
            ({"n": [HUGE]}, "attributes['n'][0]"),
            ({"n": {"deep": (-BigInt(HUGE),)}}, "attributes['n']['deep'][0]"),
        ],
    )
    def test_an_attribute_past_the_digit_limit_is_refused(
        self, dry: Tracker, attributes: dict[str, Any], field: str
    ) -> None:
        error = refusal(dry, "u1", "e", attributes=attributes)
        assert error.field == field
        assert "too large an integer" in error.rule

    def test_the_largest_int_json_can_hold_arrives_intact(self, arrive: Any) -> None:
        body, event = arrive("u1", "e", attributes={"n": BigInt(10**4299), "l": [10**4299]})
        assert body["attributes"]["n"] == 10**4299
        assert body["attributes"]["l"] == "[1" + "0" * 4299 + "]"
        assert_plain(event.attributes)

    @pytest.mark.skipif(
        not hasattr(sys, "set_int_max_str_digits"), reason="no digit limit on this Python"
    )
    def test_a_lowered_digit_limit_is_the_one_enforced(self, dry: Tracker) -> None:
        before = sys.get_int_max_str_digits()
        sys.set_int_max_str_digits(640)
        try:
            assert dry.track("u1", "e", attributes={"n": 10**639})
            error = refusal(dry, "u1", "e", attributes={"n": 10**700})
            assert error.field == "attributes['n']"
            error = refusal(dry, 10**700, "e")
            assert error.field == "identify_id"
        finally:
            sys.set_int_max_str_digits(before)

    @pytest.mark.parametrize(
        "value", [HUGE, -HUGE, BigInt(HUGE), 2**63], ids=["huge", "-huge", "subclass", "2**63"]
    )
    def test_a_huge_date_is_refused_with_a_short_message(self, dry: Tracker, value: int) -> None:
        error = refusal(dry, "u1", "e", date=value)
        assert error.field == "date"
        assert "64-bit" in error.rule

    def test_an_int_subclass_date_is_sent_as_a_plain_int(self, arrive: Any) -> None:
        body, event = arrive("u1", "e", date=BigInt(1_700_000_000_000))
        assert body["date"] == 1_700_000_000_000
        assert type(event.date) is int

    @pytest.mark.parametrize(
        "value", [HUGE, BigInt(HUGE), RaisingInt(5)], ids=["huge", "subclass", "raising"]
    )
    def test_an_int_event_name_is_refused_naming_its_type(self, dry: Tracker, value: int) -> None:
        error = refusal(dry, "u1", value)
        assert error.field == "event_name"
        assert "must be a string" in error.rule
        assert type(value).__name__ in error.rule


class TestHostileStrings:
    def test_a_str_subclass_returning_itself_from_str_is_sent_as_its_text(
        self, arrive: Any
    ) -> None:
        body, event = arrive(
            SelfStr("user-1"),
            SelfStr("signup"),
            account_id=SelfStr("acc"),
            event_id=SelfStr("id-1"),
            attributes={SelfStr("plan"): SelfStr("pro"), "nested": {SelfStr("k"): SelfStr("v")}},
            global_context={"g": SelfStr("x")},
        )
        assert body["identifyId"] == "user-1"
        assert body["eventName"] == "signup"
        assert body["eventId"] == "id-1"
        assert body["attributes"] == {"plan": "pro", "nested": '{"k":"v"}'}
        assert body["globalContext"] == {"g": "x"}
        assert_plain(event.to_dict())

    def test_a_lying_str_is_judged_by_its_characters(self, arrive: Any, dry: Tracker) -> None:
        body, event = arrive(LyingStr("user-1"), "e", attributes={LyingStr("k"): LyingStr("ab")})
        assert body["identifyId"] == "user-1"
        assert body["attributes"] == {"k": "ab"}
        assert_plain(event.to_dict())
        assert refusal(dry, "u1", LyingStr("bad \ud800")).field == "event_name"
        assert refusal(dry, "u1", LyingStr("   ")).field == "event_name"
        assert refusal(dry, "u1", "e", attributes={"s": LyingStr("\udc80")}).field == (
            "attributes['s']"
        )
        assert refusal(dry, "u1", "e", attributes={"n": [LyingStr("\udc80")]}).field == (
            "attributes['n'][0]"
        )
        assert refusal(dry, "u1", "e", attributes={LyingStr("k\ud800"): 1}).field == "attributes"

    def test_a_user_type_counts_by_its_text_not_its_hash_or_eq(
        self, arrive: Any, dry: Tracker
    ) -> None:
        error = refusal(dry, "u1", "e", user_type=LyingStr("ADMIN"))
        assert error.field == "user_type"
        assert arrive("u1", "e", user_type=LyingStr("lead"))[0]["userType"] == "LEAD"
        body, event = arrive("u1", "e", user_type=UserType.VISITOR)
        assert body["userType"] == "VISITOR"
        assert type(event.user_type) is str

    def test_a_huge_blank_string_gets_a_short_message(self, dry: Tracker) -> None:
        assert refusal(dry, "u1", " " * 1_000_000).field == "event_name"


class TestHostileInts:
    @pytest.mark.parametrize("kind", [EmptyStrInt, SurrogateInt, BigInt])
    def test_an_int_identify_id_is_sent_as_its_digits(self, arrive: Any, kind: type) -> None:
        body, event = arrive(kind(1234), "e")
        assert body["identifyId"] == "1234"
        assert type(event.identify_id) is str

    def test_int_subclass_attributes_are_sent_as_plain_ints(self, arrive: Any) -> None:
        body, event = arrive("u1", "e", attributes={"a": EmptyStrInt(3), "b": [SurrogateInt(4)]})
        assert body["attributes"] == {"a": 3, "b": "[4]"}
        assert_plain(event.attributes)


class TestHostileEnums:
    @pytest.mark.parametrize("member", [SelfEnum.A, Ping.A, Pong.B])
    def test_an_enum_whose_value_leads_back_to_itself_is_refused(
        self, dry: Tracker, member: Any
    ) -> None:
        error = refusal(dry, "u1", "e", attributes={"x": member})
        assert error.field.startswith("attributes['x']")
        assert "contains itself" in error.rule
        assert refusal(dry, "u1", "e", attributes={"x": [member]}).field.startswith(
            "attributes['x'][0]"
        )

    def test_an_enum_value_is_made_plain_too(self, arrive: Any) -> None:
        body, event = arrive("u1", "e", attributes={"x": Hidden.NAME})
        assert body["attributes"] == {"x": "hidden"}
        assert_plain(event.attributes)


class TestHostileMappings:
    @pytest.mark.parametrize(
        "attributes",
        [
            LyingDict({f"a{i}": i for i in range(60)}),
            Pairs([(f"a{i}", i) for i in range(60)], size=1),
            Endless(),
        ],
    )
    def test_the_attribute_limit_counts_what_is_iterated(
        self, dry: Tracker, attributes: Any
    ) -> None:
        error = refusal(dry, "u1", "e", attributes=attributes)
        assert error.field == "attributes"
        assert "at most 50" in error.rule

    def test_fifty_attributes_from_a_lying_mapping_are_fine(self, arrive: Any) -> None:
        lying = Pairs([(f"a{i}", i) for i in range(50)], size=50)
        assert len(arrive("u1", "e", attributes=lying)[0]["attributes"]) == 50

    @pytest.mark.parametrize("field", ["global_context", "attributes"])
    def test_a_mapping_yielding_more_than_its_len_is_refused(
        self, dry: Tracker, field: str
    ) -> None:
        for value in (Endless(), Pairs([("a", 1), ("b", 2)], size=1)):
            error = refusal(dry, "u1", "e", **{field: {"x": value}})
            assert error.field == f"{field}['x']"
            assert "more items than its len()" in error.rule
        assert "more items than its len()" in refusal(dry, "u1", "e", global_context=Endless()).rule

    @pytest.mark.parametrize(
        ("pairs", "where", "rule"),
        [
            ([1, 2], "", "(name, value) pairs"),
            ([("a", 1, 2)], "", "(name, value) pairs"),
            ([("a",)], "", "(name, value) pairs"),
            ([Opaque()], "", "(name, value) pairs (got Opaque)"),
            ([(Opaque(), 1)], "[<Opaque>]", "names must be strings (got Opaque)"),
            ([(b"k", 1)], "[<bytes>]", "names must be strings (got bytes)"),
            ([(7, 1)], "[7]", "names must be strings (got int 7)"),
        ],
    )
    def test_items_that_are_not_pairs_of_a_name_and_a_value_are_refused(
        self, dry: Tracker, pairs: list[Any], where: str, rule: str
    ) -> None:
        error = refusal(dry, "u1", "e", attributes=Pairs(pairs, size=len(pairs)))
        assert error.field == "attributes" + where
        assert rule in error.rule
        nested = refusal(dry, "u1", "e", attributes={"n": Pairs(pairs, size=len(pairs))})
        assert nested.field == "attributes['n']" + where
        assert rule in nested.rule

    def test_a_mapping_that_cannot_be_read_is_refused(self, dry: Tracker) -> None:
        for kwargs, field in [
            ({"attributes": RaisingMapping()}, "attributes"),
            ({"global_context": RaisingMapping()}, "global_context"),
            ({"attributes": {"m": [RaisingMapping()]}}, "attributes['m'][0]"),
        ]:
            error = refusal(dry, "u1", "e", **kwargs)
            assert error.field == field
            assert "could not be read" in error.rule
            assert "Called" in error.rule

    def test_a_list_subclass_sends_what_it_holds(self, arrive: Any) -> None:
        body, _ = arrive("u1", "e", attributes={"l": LyingList([1, SelfStr("a")])})
        assert body["attributes"] == {"l": '[1,"a"]'}


class TestHostileNumbers:
    def test_a_float_subclass_is_sent_as_its_value(self, arrive: Any, dry: Tracker) -> None:
        body, event = arrive("u1", "e", attributes={"f": WeirdFloat(1.5), "l": [WeirdFloat(2.5)]})
        assert body["attributes"] == {"f": 1.5, "l": "[2.5]"}
        assert_plain(event.attributes)
        error = refusal(dry, "u1", "e", attributes={"f": LyingNanFloat(math.nan)})
        assert "finite" in error.rule
        assert refusal(dry, "u1", "e", attributes={"f": [WeirdFloat(math.inf)]}).field == (
            "attributes['f'][0]"
        )

    @pytest.mark.parametrize(
        "value",
        [
            Decimal("sNaN"),
            Decimal("-sNaN"),
            Decimal("NaN"),
            Decimal("-Infinity"),
            Decimal("1e400"),
            Decimal("9e999999999"),
            Decimal("1" * 400),
            WeirdDecimal("NaN"),
            WeirdDecimal("sNaN"),
            WeirdDecimal("1e400"),
        ],
        ids=lambda value: f"{type(value).__name__}({Decimal.__str__(value)[:12]})",
    )
    def test_a_decimal_no_float_can_hold_is_refused(self, dry: Tracker, value: Decimal) -> None:
        for attributes, field in (({"d": value}, "attributes['d']"), ({"d": [value]}, "[0]")):
            error = refusal(dry, "u1", "e", attributes=attributes)
            assert error.field.endswith(field)
            assert "finite" in error.rule

    def test_decimal_edge_cases_that_fit_a_float_arrive(self, arrive: Any) -> None:
        body, event = arrive(
            "u1",
            "e",
            attributes={
                "neg_zero": Decimal("-0"),
                "tiny": Decimal("1e-999999999"),
                "long": Decimal("0." + "3" * 5000),
                "weird": WeirdDecimal("2.5"),
            },
        )
        assert body["attributes"] == {"neg_zero": -0.0, "tiny": 0.0, "long": 1 / 3, "weird": 2.5}
        assert math.copysign(1, body["attributes"]["neg_zero"]) == -1
        assert_plain(event.attributes)

    def test_a_bool_stays_a_bool_and_is_no_int_for_ids_or_dates(
        self, arrive: Any, dry: Tracker
    ) -> None:
        assert arrive("u1", "e", attributes={"b": True, "l": [False]})[0]["attributes"] == {
            "b": True,
            "l": "[false]",
        }
        assert refusal(dry, True, "e").field == "identify_id"
        assert refusal(dry, "u1", "e", date=False).field == "date"


class TestHostileDatetimes:
    @pytest.mark.parametrize("zone", [RaisingTz(), WildTz()])
    def test_a_tzinfo_that_fails_is_refused(self, dry: Tracker, zone: Any) -> None:
        moment = datetime(2024, 1, 1, tzinfo=zone)
        assert refusal(dry, "u1", "e", date=moment).field == "date"
        assert refusal(dry, "u1", "e", attributes={"t": moment}).field == "attributes['t']"
        assert refusal(dry, "u1", "e", attributes={"t": [moment]}).field == "attributes['t'][0]"

    def test_a_datetime_subclass_is_read_as_the_instant_it_holds(self, arrive: Any) -> None:
        moment = SneakyDatetime(2024, 3, 1, 12, 0, 0, 250000, tzinfo=timezone(timedelta(hours=-5)))
        body, event = arrive("u1", "e", date=moment, attributes={"t": moment})
        assert body["date"] == 1_709_312_400_250
        assert body["attributes"] == {"t": "2024-03-01T17:00:00.250Z"}
        assert_plain(event.to_dict())


class TestErrorMessagesRunNoCodeOfTheValue:
    @pytest.mark.parametrize(
        "field",
        ["identify_id", "event_name", "account_id", "event_id", "url", "date", "user_type"],
    )
    def test_a_value_whose_repr_raises_is_refused_naming_its_type(
        self, dry: Tracker, field: str
    ) -> None:
        kwargs: dict[str, Any] = {"identify_id": "u1", "event_name": "e", field: Opaque()}
        error = refusal(dry, kwargs.pop("identify_id"), kwargs.pop("event_name"), **kwargs)
        assert error.field == field
        assert "Opaque" in error.rule

    @pytest.mark.parametrize(
        "attributes",
        [Opaque(), {"x": Opaque()}, {"x": [Opaque()]}, {"x": {"y": Opaque()}}, {"x": {1: 2}}],
    )
    def test_attribute_values_whose_repr_raises_are_refused(
        self, dry: Tracker, attributes: Any
    ) -> None:
        error = refusal(dry, "u1", "e", attributes=attributes)
        assert error.field.startswith("attributes")
