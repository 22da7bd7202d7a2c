"""Unit tests of tracker/_retry.py: what a status means, Retry-After, the policy's
decisions. Pure functions and values: no sockets, no clock, no sleeps."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from email.utils import format_datetime

import attrs
import pytest

from tracker._retry import (
    NOT_RETRYABLE_5XX,
    Decision,
    Kind,
    RetryPolicy,
    classify,
    parse_retry_after,
)

NOW = 1_700_000_000.0  # a wall-clock time, for Retry-After dates


def policy(**overrides: object) -> RetryPolicy:
    values: dict[str, object] = {
        "max_retries": 3,
        "max_retry_time": 600.0,
        "backoff_base": 1.0,
        "backoff_max": 8.0,
        "max_retry_after": 60.0,
        "default_retry_after": 5.0,
    }
    values.update(overrides)
    return RetryPolicy(**values)  # type: ignore[arg-type]


class TestClassify:
    @pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
    def test_2xx_is_delivered(self, status: int) -> None:
        assert classify(status) is Kind.DELIVERED

    def test_429_is_rate_limited(self) -> None:
        assert classify(429) is Kind.RATE_LIMITED

    @pytest.mark.parametrize("status", [408, 500, 502, 503, 504, 507, 599])
    def test_408_and_5xx_are_retried(self, status: int) -> None:
        assert classify(status) is Kind.RETRY

    @pytest.mark.parametrize("status", sorted(NOT_RETRYABLE_5XX))
    def test_501_and_505_no_retry_can_change(self, status: int) -> None:
        assert classify(status) is Kind.REJECTED

    @pytest.mark.parametrize("status", [401, 403])
    def test_401_403_are_unauthorized(self, status: int) -> None:
        assert classify(status) is Kind.UNAUTHORIZED

    @pytest.mark.parametrize("status", [100, 103, 199, 300, 301, 304, 400, 404, 409, 413, 422, 600])
    def test_everything_else_is_rejected(self, status: int) -> None:
        assert classify(status) is Kind.REJECTED


class TestParseRetryAfter:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [("0", 0.0), ("1", 1.0), (" 2 ", 2.0), ("0.25", 0.25), ("120", 120.0), ("1e3", 1000.0)],
    )
    def test_delay_seconds(self, value: str, seconds: float) -> None:
        assert parse_retry_after(value, NOW) == seconds

    def test_absent_is_none(self) -> None:
        assert parse_retry_after(None, NOW) is None

    def test_an_http_date_is_seconds_from_now(self) -> None:
        when = datetime.fromtimestamp(NOW + 30, tz=timezone.utc)
        assert parse_retry_after(format_datetime(when, usegmt=True), NOW) == pytest.approx(30)

    def test_an_http_date_with_a_zone_offset(self) -> None:
        # 12:00:30 +0100 is 11:00:30 UTC
        now = datetime(2026, 1, 2, 11, 0, tzinfo=timezone.utc).timestamp()
        assert parse_retry_after("Fri, 02 Jan 2026 12:00:30 +0100", now) == pytest.approx(30)

    def test_an_http_date_in_the_past_is_zero(self) -> None:
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "soon",
            "-1",
            "nan",
            "inf",
            "-inf",
            "1e400",
            "Wed, 21 Oct 2015 07:28:00 +9999",  # zone past a day: ValueError
            "Wed, 21 Oct 2015 07:28:00 +99999999999999",  # past a C int: OverflowError
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "Wed, 21 Foo 2015 07:28:00 GMT",
            "Wed, 21 Oct 99999999999 07:28:00 GMT",
            "1" * 65,  # longer than any valid form: not parsed at all
            "Wed, 21 Oct 2015 07:28:00 GMT" + " " * 40 + "x",
        ],
    )
    def test_unreadable_is_none(self, value: str) -> None:
        # None: the caller waits default_retry_after, as documented (issue 9 item 6).
        assert parse_retry_after(value, NOW) is None

    def test_never_raises_on_any_short_text(self) -> None:
        for text in ["\x00", "\ud800", "Mon, 1 Jan 1 0:0:0 -2400", ", , , ,", "GMT", "1 2"]:
            result = parse_retry_after(text, NOW)
            assert result is None or (math.isfinite(result) and result >= 0)


class TestPause:
    def test_absent_retry_after_is_the_default(self) -> None:
        assert policy(default_retry_after=7.0).pause(None) == 7.0

    def test_capped_at_max_retry_after(self) -> None:
        p = policy(max_retry_after=60.0)
        assert p.pause(3600.0) == 60.0
        assert p.pause(60.0) == 60.0
        assert p.pause(0.5) == 0.5
        assert p.pause(0.0) == 0.0


class TestBackoff:
    def test_the_schedule_doubles_up_to_the_cap(self) -> None:
        assert policy(backoff_base=1.0, backoff_max=8.0, max_retries=10).waits == (1, 2, 4, 8)

    def test_few_retries_need_few_waits(self) -> None:
        assert policy(backoff_base=0.5, backoff_max=100.0, max_retries=2).waits == (0.5, 1.0)

    def test_waits_are_fully_jittered_within_the_schedule(self) -> None:
        p = policy(backoff_base=1.0, backoff_max=8.0, max_retries=10)
        for failures, top in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 8)]:
            waits = [p.backoff(failures) for _ in range(200)]
            assert all(0 <= w <= top for w in waits), (failures, max(waits))
            assert max(waits) > top / 2  # jittered over the range, not pinned at 0
        assert len({p.backoff(3) for _ in range(50)}) > 1


class TestDecide:
    def test_a_retryable_failure_counts_and_waits_a_backoff(self) -> None:
        p = policy(max_retries=3, backoff_base=1.0, backoff_max=8.0)
        d = p.decide(Kind.RETRY, failures=1, first_attempt=NOW, now=NOW + 1, pause=0.0)
        assert d.failures == 2
        assert d.delay is not None
        assert 0 <= d.delay <= 2

    def test_past_max_retries_it_gives_up(self) -> None:
        p = policy(max_retries=3)
        assert p.decide(Kind.RETRY, failures=3, first_attempt=NOW, now=NOW, pause=0.0) == Decision(
            None, 4
        )

    def test_max_retries_zero_never_retries(self) -> None:
        p = policy(max_retries=0)
        assert p.decide(Kind.RETRY, failures=0, first_attempt=NOW, now=NOW, pause=0).delay is None

    def test_max_retries_none_retries_for_ever(self) -> None:
        p = policy(max_retries=None, max_retry_time=math.inf)
        d = p.decide(Kind.RETRY, failures=10_000, first_attempt=0.0, now=1e9, pause=0.0)
        assert d.delay is not None
        assert d.failures == 10_001

    def test_a_429_waits_its_pause_and_does_not_use_up_retries(self) -> None:
        p = policy(max_retries=0)
        d = p.decide(Kind.RATE_LIMITED, failures=0, first_attempt=NOW, now=NOW, pause=4.0)
        assert d == Decision(4.0, 0)

    def test_nothing_starts_past_max_retry_time(self) -> None:
        p = policy(max_retry_time=10.0, max_retries=None)
        late = p.decide(Kind.RATE_LIMITED, failures=0, first_attempt=NOW, now=NOW + 8, pause=3.0)
        assert late.delay is None
        in_time = p.decide(Kind.RATE_LIMITED, failures=0, first_attempt=NOW, now=NOW + 8, pause=2.0)
        assert in_time.delay == 2.0

    def test_deciding_changes_nothing(self) -> None:
        # A value: decide() mutates neither the policy nor anything handed to it.
        p = policy()
        before = attrs.asdict(p)
        for _ in range(3):
            p.decide(Kind.RETRY, failures=1, first_attempt=NOW, now=NOW, pause=0.0)
            p.decide(Kind.RATE_LIMITED, failures=1, first_attempt=NOW, now=NOW, pause=1.0)
        assert attrs.asdict(p) == before
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            p.max_retries = 5  # type: ignore[misc]
