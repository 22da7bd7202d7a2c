"""track()'s validation in the caller's thread, and the wire form of what it sends."""

from __future__ import annotations

import enum
import json
import pickle
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable

import pytest

from tracker import CustomEvent, Tracker, UserType, ValidationError
from tracker.testing import FakePX

from ._support import API_KEY, PRODUCT_KEY


@pytest.fixture
def dry() -> Tracker:
    """Validates and counts, sends nothing."""
    tracker = Tracker(API_KEY, product_key=PRODUCT_KEY, send=False, flush_at_exit=False)
    yield tracker
    tracker.shutdown(0)


@pytest.fixture
def sent(fake_px: FakePX, make_tracker: Callable[..., Tracker]) -> Callable[..., dict[str, Any]]:
    """track() in sync mode and return the body FakePX accepted."""
    tracker = make_tracker(fake_px.url, sync_mode=True)

    def send(*args: Any, **kwargs: Any) -> dict[str, Any]:
        fake_px.clear()
        event_id = tracker.track(*args, **kwargs)
        assert event_id is not None
        (body,) = fake_px.events
        assert body["eventId"] == event_id
        return body

    return send


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class TestRequiredFields:
    @pytest.mark.parametrize("value", [None, "", "   ", "\n"])
    def test_identify_id_must_be_a_non_empty_string(self, dry: Tracker, value: Any) -> None:
        with pytest.raises(ValidationError) as info:
            dry.track(value, "signup")
        assert info.value.field == "identify_id"
        assert "identify_id" in str(info.value)

    @pytest.mark.parametrize("value", [None, "", " ", 42, b"bytes"])
    def test_event_name_must_be_a_non_empty_string(self, dry: Tracker, value: Any) -> None:
        with pytest.raises(ValidationError) as info:
            dry.track("u1", value)
        assert info.value.field == "event_name"

    def test_event_name_longer_than_2000_chars_is_refused(self, dry: Tracker) -> None:
        dry.track("u1", "x" * 2000)
        with pytest.raises(ValidationError, match=r"event_name: must be at most 2000 .*2001"):
            dry.track("u1", "x" * 2001)

    def test_integer_identify_id_is_sent_as_a_string(self, sent: Callable[..., Any]) -> None:
        assert sent(1234, "signup")["identifyId"] == "1234"

    def test_bool_identify_id_is_refused(self, dry: Tracker) -> None:
        with pytest.raises(ValidationError, match="identify_id"):
            dry.track(True, "signup")

    @pytest.mark.parametrize("value", ["ADMIN", "", None, 3, "users"])
    def test_user_type_outside_the_four_is_refused(self, dry: Tracker, value: Any) -> None:
        with pytest.raises(ValidationError) as info:
            dry.track("u1", "signup", user_type=value)
        assert info.value.field == "user_type"
        assert "LEAD, USER, VISITOR, EMPTY_USER_TYPE" in str(info.value)

    @pytest.mark.parametrize(
        ("given", "wire"),
        [
            (UserType.LEAD, "LEAD"),
            ("VISITOR", "VISITOR"),
            ("empty_user_type", "EMPTY_USER_TYPE"),
            ("Lead", "LEAD"),
        ],
    )
    def test_user_type_accepts_enum_and_strings(
        self, sent: Callable[..., Any], given: Any, wire: str
    ) -> None:
        assert sent("u1", "e", user_type=given)["userType"] == wire

    def test_a_property_key_is_required_from_somewhere(self) -> None:
        tracker = Tracker(API_KEY, send=False, flush_at_exit=False)
        try:
            with pytest.raises(ValidationError, match="property_key: is required"):
                tracker.track("u1", "signup")
            assert tracker.track("u1", "signup", property_key="AP-OTHER-2") is not None
        finally:
            tracker.shutdown(0)

    def test_property_key_argument_overrides_product_key(self, sent: Callable[..., Any]) -> None:
        assert sent("u1", "e", property_key="AP-OTHER-2")["propertyKey"] == "AP-OTHER-2"

    @pytest.mark.parametrize(
        "field",
        ["account_id", "session_id", "event_type", "url", "referrer", "remote_host", "event_id"],
    )
    def test_optional_strings_must_be_non_empty_when_given(self, dry: Tracker, field: str) -> None:
        with pytest.raises(ValidationError) as info:
            dry.track("u1", "signup", **{field: ""})
        assert info.value.field == field
        with pytest.raises(ValidationError):
            dry.track("u1", "signup", **{field: 12.5})

    def test_nothing_invalid_is_counted_or_queued(self, dry: Tracker) -> None:
        with pytest.raises(ValidationError):
            dry.track("", "signup")
        assert dry.stats().tracked == 0


class TestDate:
    def test_default_is_the_moment_of_the_call(self, sent: Callable[..., Any]) -> None:
        before = int(datetime.now(timezone.utc).timestamp() * 1000)
        body = sent("u1", "e")
        after = int(datetime.now(timezone.utc).timestamp() * 1000)
        assert before - 1 <= body["date"] <= after + 1

    def test_epoch_milliseconds_pass_through(self, sent: Callable[..., Any]) -> None:
        assert sent("u1", "e", date=1_700_000_000_123)["date"] == 1_700_000_000_123

    def test_aware_datetime_becomes_epoch_milliseconds(self, sent: Callable[..., Any]) -> None:
        when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
        assert sent("u1", "e", date=when)["date"] == int(when.timestamp() * 1000)

    @pytest.mark.parametrize(
        "value", [datetime(2024, 1, 1), 1.5e12, "2024-01-01", True, date(2024, 1, 1)]
    )
    def test_anything_else_is_refused(self, dry: Tracker, value: Any) -> None:
        with pytest.raises(ValidationError) as info:
            dry.track("u1", "e", date=value)
        assert info.value.field == "date"

    def test_naive_datetime_error_says_why(self, dry: Tracker) -> None:
        with pytest.raises(ValidationError, match="timezone-aware"):
            dry.track("u1", "e", date=datetime(2024, 1, 1))


class TestEventId:
    def test_given_event_id_is_kept(self, sent: Callable[..., Any]) -> None:
        assert sent("u1", "e", event_id="my-id-1")["eventId"] == "my-id-1"

    # Generated ids: tests/test_event_ids.py


class TestAttributes:
    def test_flat_values_pass_unchanged(self, sent: Callable[..., Any]) -> None:
        attrs = {"s": "x", "i": 3, "f": 1.5, "b": False, "n": None}
        assert sent("u1", "e", attributes=attrs)["attributes"] == attrs

    def test_conversions_of_the_contract(self, sent: Callable[..., Any]) -> None:
        ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
        body = sent(
            "u1",
            "e",
            attributes={
                "when": datetime(
                    2024, 3, 1, 12, 0, 0, 250000, tzinfo=timezone(timedelta(hours=-5))
                ),
                "day": date(2024, 3, 1),
                "price": Decimal("12.50"),
                "ident": ident,
                "color": Color.RED,
                "level": Level.HIGH,
            },
        )
        assert body["attributes"] == {
            "when": "2024-03-01T17:00:00.250Z",
            "day": "2024-03-01",
            "price": 12.5,
            "ident": str(ident),
            "color": "red",
            "level": 3,
        }

    def test_nested_values_are_sent_as_compact_json_strings(self, sent: Callable[..., Any]) -> None:
        body = sent(
            "u1",
            "e",
            attributes={
                "cart": {"items": [1, 2], "when": datetime(2024, 1, 1, tzinfo=timezone.utc)},
                "tags": ("a", "b"),
                "empty": [],
            },
        )
        attrs = body["attributes"]
        assert attrs["cart"] == '{"items":[1,2],"when":"2024-01-01T00:00:00.000Z"}'
        assert attrs["tags"] == '["a","b"]'
        assert attrs["empty"] == "[]"
        assert json.loads(attrs["cart"])["items"] == [1, 2]

    def test_global_context_gets_the_same_cleaning(self, sent: Callable[..., Any]) -> None:
        body = sent("u1", "e", global_context={"plan": "pro", "seats": [1]})
        assert body["globalContext"] == {"plan": "pro", "seats": "[1]"}

    def test_the_callers_dict_is_copied(self, fake_px: FakePX, make_tracker: Any) -> None:
        tracker = make_tracker(fake_px.url)
        attrs = {"a": 1}
        tracker.track("u1", "e", attributes=attrs)
        attrs["a"] = 2
        attrs["b"] = 3
        assert tracker.flush(10)
        assert fake_px.events[0]["attributes"] == {"a": 1}

    @pytest.mark.parametrize(
        ("attributes", "field", "rule"),
        [
            ({"x": float("nan")}, "attributes['x']", "finite"),
            ({"x": float("inf")}, "attributes['x']", "finite"),
            ({"x": Decimal("NaN")}, "attributes['x']", "finite"),
            ({"x": datetime(2024, 1, 1)}, "attributes['x']", "timezone-aware"),
            ({"x": {1, 2}}, "attributes['x']", "unsupported value type set"),
            ({"x": b"raw"}, "attributes['x']", "unsupported value type bytes"),
            ({"x": object()}, "attributes['x']", "unsupported value type object"),
            ({"x": {"deep": [float("nan")]}}, "attributes['x']['deep'][0]", "finite"),
            ({"x": {1: "a"}}, "attributes['x'][1]", "names must be strings"),
            ({1: "a"}, "attributes", "names must be strings"),
            ({"": "a"}, "attributes", "must not be empty"),
            ({"k" * 1025: 1}, "attributes", "at most 1024 characters"),
            ({f"a{i}": i for i in range(51)}, "attributes", "at most 50"),
            (["not", "a", "dict"], "attributes", "must be a dict"),
        ],
    )
    def test_bad_attributes_name_the_field_and_the_rule(
        self, dry: Tracker, attributes: Any, field: str, rule: str
    ) -> None:
        with pytest.raises(ValidationError) as info:
            dry.track("u1", "e", attributes=attributes)
        assert info.value.field.startswith(field)
        assert rule in str(info.value)

    def test_fifty_attributes_and_1024_char_names_are_fine(self, dry: Tracker) -> None:
        assert dry.track("u1", "e", attributes={f"a{i}": i for i in range(50)})
        assert dry.track("u1", "e", attributes={"k" * 1024: 1})

    def test_reference_cycles_are_refused_not_recursed(self, dry: Tracker) -> None:
        loop: dict[str, Any] = {}
        loop["self"] = loop
        with pytest.raises(ValidationError, match="reference cycle"):
            dry.track("u1", "e", attributes={"x": loop})

    def test_shared_but_acyclic_values_are_fine(self, dry: Tracker) -> None:
        shared = [1, 2]
        assert dry.track("u1", "e", attributes={"x": {"a": shared, "b": shared}})


class TestWireForm:
    def test_every_field_in_camel_case_and_none_left_out(self, sent: Callable[..., Any]) -> None:
        full = sent(
            "u1",
            "Report Exported",
            attributes={"format": "csv"},
            user_type="LEAD",
            account_id="acc-1",
            date=1_700_000_000_000,
            event_id="id-1",
            session_id="s-1",
            event_type="custom",
            global_context={"plan": "pro"},
            url="https://app.example/r",
            referrer="https://example/",
            remote_host="10.0.0.1",
        )
        assert full == {
            "eventId": "id-1",
            "identifyId": "u1",
            "propertyKey": PRODUCT_KEY,
            "date": 1_700_000_000_000,
            "userType": "LEAD",
            "eventName": "Report Exported",
            "eventType": "custom",
            "sessionId": "s-1",
            "accountId": "acc-1",
            "globalContext": {"plan": "pro"},
            "attributes": {"format": "csv"},
            "url": "https://app.example/r",
            "referrer": "https://example/",
            "remoteHost": "10.0.0.1",
        }
        minimal = sent("u1", "e")
        assert set(minimal) == {
            "eventId",
            "identifyId",
            "propertyKey",
            "date",
            "userType",
            "eventName",
        }

    def test_non_ascii_text_survives(self, sent: Callable[..., Any]) -> None:
        body = sent("usér-ü", "Bericht exportiert ✓", attributes={"city": "Zürich"})
        assert body["identifyId"] == "usér-ü"
        assert body["eventName"] == "Bericht exportiert ✓"
        assert body["attributes"] == {"city": "Zürich"}


class TestCustomEvent:
    def test_is_frozen_and_gives_its_wire_dict(self) -> None:
        event = CustomEvent(
            identify_id="u1", event_name="e", property_key="AP-1", date=5, event_id="i"
        )
        with pytest.raises(AttributeError):
            event.event_name = "other"  # type: ignore[misc]
        assert event.to_dict() == {
            "eventId": "i",
            "identifyId": "u1",
            "propertyKey": "AP-1",
            "date": 5,
            "userType": "USER",
            "eventName": "e",
        }

    def test_track_builds_the_same_event_as_the_constructor(self, fake_px: FakePX) -> None:
        seen: list[CustomEvent] = []
        with Tracker(API_KEY, base_url=fake_px.url, on_success=seen.append) as tracker:
            tracker.track(
                "u1",
                "e",
                attributes={"a": 1},
                user_type="LEAD",
                account_id="acc",
                property_key="AP-9",
                date=7,
                event_id="id-7",
                session_id="s",
                event_type="t",
                global_context={"g": True},
                url="https://x.example",
                referrer="https://r.example",
                remote_host="10.0.0.1",
            )
        (event,) = seen
        assert event == CustomEvent(
            identify_id="u1",
            event_name="e",
            property_key="AP-9",
            user_type="LEAD",
            date=7,
            event_id="id-7",
            attributes={"a": 1},
            account_id="acc",
            session_id="s",
            event_type="t",
            global_context={"g": True},
            url="https://x.example",
            referrer="https://r.example",
            remote_host="10.0.0.1",
        )
        assert "identify_id='u1'" in repr(event)

    def test_validation_error_pickles_with_its_field(self) -> None:
        error = ValidationError("attributes['x']", "must be finite")
        copy = pickle.loads(pickle.dumps(error))
        assert copy.field == "attributes['x']"
        assert str(copy) == str(error)
