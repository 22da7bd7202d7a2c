"""FakePX's rate limiters: the token bucket and nginx limit_req's leaky bucket, by the numbers."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Optional

import pytest
import requests

from tracker.testing import FakePX
from tracker.testing._limits import LeakyBucket, TokenBucket

from ._support import wait_until

EVENT = {"identifyId": "u1", "propertyKey": "AP-1", "userType": "USER", "eventName": "signup"}


def post(px: FakePX, key: str = "k") -> requests.Response:
    return requests.post(
        px.url + "/v1/events/custom",
        data=json.dumps(EVENT),
        headers={"Content-Type": "application/json", "X-APTRINSIC-API-KEY": key},
        timeout=10,
    )


def run(limiter: Any, times_ms: list[int]) -> list[Optional[float]]:
    """The limiter's answers to requests at these times (whole milliseconds)."""
    return [limiter.admit(ms / 1000) for ms in times_ms]


class TestLeakyBucketArithmetic:
    """nginx 1.22's ngx_http_limit_req_lookup/account, driven with explicit times."""

    def test_burst_0_at_200_per_second_admits_one_request_per_5_ms(self) -> None:
        bucket = LeakyBucket(rate=200, burst=0)
        # 1000 excess for the 2nd request within the same ms; 200 after 4 ms; 0 after 5.
        assert run(bucket, [10_000, 10_000, 10_004, 10_005, 10_009, 10_010]) == [
            0.0,
            None,
            None,
            0.0,
            None,
            0.0,
        ]

    def test_a_rejected_request_leaves_the_state_as_it_was(self) -> None:
        bucket = LeakyBucket(rate=200, burst=0)
        # Had the rejection at 10_004 been counted, 10_005 would find excess 1000 and fail.
        assert run(bucket, [10_000, 10_001, 10_002, 10_003, 10_004, 10_005]) == [
            0.0,
            None,
            None,
            None,
            None,
            0.0,
        ]

    def test_time_counts_in_whole_milliseconds(self) -> None:
        bucket = LeakyBucket(rate=200, burst=0)
        assert bucket.admit(10.0000) == 0.0
        assert bucket.admit(10.0049) is None  # 4 ms by nginx's clock, not 4.9
        assert bucket.admit(10.0050) == 0.0
        assert bucket.admit(10.005_01) is None  # the same millisecond
        assert bucket.admit(10.0109) == 0.0  # 5.89 ms since, 5 by nginx's clock
        assert bucket.admit(10.0150) == 0.0  # 4.1 ms since, 5 by nginx's clock
        assert bucket.admit(10.0199) is None

    def test_seconds_that_name_a_millisecond_land_in_it(self) -> None:
        bucket = LeakyBucket(rate=200, burst=0)
        # 1.007 * 1000 is 1006.9999999999999 in floating point: still millisecond 1007.
        assert [bucket.admit(t) for t in (0.997, 1.002, 1.007)] == [0.0, 0.0, 0.0]

    def test_nodelay_admits_burst_plus_one_at_once_then_one_per_interval(self) -> None:
        bucket = LeakyBucket(rate=200, burst=20)
        assert run(bucket, [5_000] * 21) == [0.0] * 21
        assert bucket.admit(5.000) is None
        # 5 ms later exactly one request's worth has leaked out.
        assert run(bucket, [5_005, 5_005]) == [0.0, None]
        # After 100 ms (20 requests' worth) the burst is free again: 20 more pass.
        assert run(bucket, [5_105] * 21) == [0.0] * 20 + [None]

    def test_delaying_mode_holds_each_request_until_it_conforms(self) -> None:
        bucket = LeakyBucket(rate=200, burst=5, delay=True)
        # Excess 0, 1000, ..., 5000 at 200 r/s: held 0, 5, ..., 25 ms; the 7th is over.
        assert run(bucket, [1_000] * 7) == [0.0, 0.005, 0.01, 0.015, 0.02, 0.025, None]
        # 12 ms later 2400 has leaked: excess 5000 - 2400 + 1000 = 3600, held 18 ms.
        assert bucket.admit(1.012) == 0.018

    def test_integer_sums_truncate_as_nginxs_do(self) -> None:
        bucket = LeakyBucket(rate=1.5, burst=1, delay=True)
        assert bucket.admit(0.0) == 0.0
        # 1 ms leaks 1500 * 1 // 1000 = 1 (not 1.5); excess 999 held 999000 // 1500 = 666 ms.
        assert bucket.admit(0.001) == 0.666
        # Delays are whole milliseconds: 1000 excess at 3 r/s is 333 ms, not 333.3.
        assert run(LeakyBucket(rate=3, burst=1, delay=True), [0, 0]) == [0.0, 0.333]

    def test_a_clock_stepped_back_gives_no_credit(self) -> None:
        bucket = LeakyBucket(rate=200, burst=0)
        assert bucket.admit(10.0) == 0.0
        assert bucket.admit(9.0) is None  # -1000 ms counts as 0 ms
        assert bucket.admit(10.005) == 0.0  # measured from 10.0, which did not move back
        within_burst = LeakyBucket(rate=200, burst=1)
        # Admitted while stepped back, the time of the last request stays at 10.000, so
        # 10.005 leaks only 5 ms: nginx moves "last" only when time went forward.
        assert run(within_burst, [10_000, 9_000, 10_005, 10_005]) == [0.0, 0.0, 0.0, None]

    def test_a_clock_stepped_back_over_a_minute_counts_as_one_millisecond(self) -> None:
        bucket = LeakyBucket(rate=1000, burst=0)  # 1 ms leaks a whole request at 1000 r/s
        assert bucket.admit(100.0) == 0.0
        assert bucket.admit(30.0) == 0.0
        assert bucket.admit(30.0) is None


class TestTokenBucketArithmetic:
    def test_default_burst_is_one_seconds_worth_refilled_continuously(self) -> None:
        bucket = TokenBucket(rate=5)
        assert run(bucket, [0] * 6) == [0.0] * 5 + [None]
        assert run(bucket, [199, 200, 200]) == [None, 0.0, None]  # one token per 200 ms
        assert run(bucket, [10_000] * 6) == [0.0] * 5 + [None]  # never more than 5 saved

    def test_a_slow_rate_still_holds_one_token(self) -> None:
        bucket = TokenBucket(rate=0.5)
        assert run(bucket, [0, 0, 1_999, 2_000]) == [0.0, None, None, 0.0]

    def test_a_clock_stepped_back_neither_refills_nor_drains(self) -> None:
        bucket = TokenBucket(rate=5)
        assert run(bucket, [10_000, 9_000, 9_500, 10_000, 10_000]) == [0.0] * 5
        assert bucket.admit(10.0) is None
        assert bucket.admit(10.25) == 0.0  # refilled from 10.0, not from 9.0

    def test_burst_sets_how_many_pass_beyond_the_first(self) -> None:
        assert run(TokenBucket(rate=200, burst=0), [0, 0, 5]) == [0.0, None, 0.0]
        assert run(TokenBucket(rate=200, burst=20), [0] * 22) == [0.0] * 21 + [None]


class TestLimiterOptions:
    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"limiter": "nginx"}, "'limiter' must be 'token_bucket' or 'leaky' (got 'nginx')"),
            ({"burst": -1}, "'burst' must be a whole number >= 0, or None (got -1)"),
            ({"burst": 2.5}, "'burst' must be a whole number >= 0, or None (got 2.5)"),
            ({"burst": True}, "'burst' must be a whole number >= 0, or None (got True)"),
            ({"delay": "yes"}, "'delay' must be True or False (got 'yes')"),
            ({"delay": True}, "'delay' applies to limiter='leaky' only"),
            (
                {"rate_limit": -5},
                "'rate_limit' must be a finite number of requests per second >= 0",
            ),
            ({"rate_limit": float("inf")}, "(got inf)"),
            ({"rate_limit": float("nan")}, "(got nan)"),
        ],
    )
    def test_bad_options_name_the_option_and_the_rule(
        self, options: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(ValueError) as raised:
            FakePX(rate_limit=options.pop("rate_limit", 10), **options)
        assert message in str(raised.value)

    def test_a_refused_change_while_running_keeps_the_limit_in_force(self) -> None:
        with FakePX(rate_limit=1, limiter="leaky", burst=0, delay=True) as px:
            with pytest.raises(ValueError, match="'burst'"):
                px.burst = -1
            with pytest.raises(ValueError, match="'token_bucket' with delay=True"):
                px.limiter = "token_bucket"
            assert (px.rate_limit, px.limiter, px.burst, px.delay) == (1, "leaky", 0, True)
            assert [post(px).status_code for _ in range(2)] == [201, 429]
            px.delay = False
            px.limiter = "token_bucket"  # in this order it is accepted
            assert [post(px).status_code for _ in range(2)] == [201, 429]

    def test_every_change_starts_the_limiter_afresh(self) -> None:
        with FakePX(rate_limit=1, limiter="leaky") as px:
            assert [post(px).status_code for _ in range(2)] == [201, 429]
            px.burst = 2  # a new limiter, no excess carried over
            assert [post(px).status_code for _ in range(4)] == [201, 201, 201, 429]
            px.rate_limit = None
            assert [post(px).status_code for _ in range(5)] == [201] * 5


class TestOverHTTP:
    def test_leaky_nodelay_answers_the_burst_at_once_then_429_with_retry_after(self) -> None:
        # 1 r/s: the requests below all come within the second one request takes to leak.
        with FakePX(rate_limit=1, limiter="leaky", burst=2, retry_after=2) as px:
            responses = [post(px) for _ in range(4)]
            requests_seen = px.requests
        assert [r.status_code for r in responses] == [201, 201, 201, 429]
        assert responses[3].headers["Retry-After"] == "2"
        assert responses[3].json()["externalapierror"]["status"] == "TOO_MANY_REQUESTS"
        assert [r.delayed for r in requests_seen] == [0.0] * 4
        assert len(px.events) == 3

    def test_leaky_delaying_mode_holds_within_the_burst_and_rejects_beyond(self) -> None:
        # 2 r/s, burst 1: the 2nd request is held ~500 ms; a 3rd meanwhile is over the burst.
        with FakePX(rate_limit=2, limiter="leaky", burst=1, delay=True) as px:
            assert post(px).status_code == 201
            held: list[requests.Response] = []
            second = threading.Thread(target=lambda: held.append(post(px, key="second")))
            second.start()
            assert wait_until(lambda: px.in_progress == 1)
            third = post(px, key="third")
            assert third.status_code == 429
            assert px.in_progress == 1  # answered while the 2nd is still held
            second.join(10)
            records = {r.headers["X-APTRINSIC-API-KEY"]: r for r in px.requests}
        assert [r.status_code for r in held] == [201]
        assert 0.25 < records["second"].delayed <= 0.5
        answered_in = records["second"].answered_at - records["second"].arrived_at
        assert answered_in >= records["second"].delayed
        assert records["third"].answered_at < records["second"].answered_at
        assert len(px.events) == 2

    def test_token_bucket_burst_over_http(self) -> None:
        with FakePX(rate_limit=1, burst=2) as px:
            assert [post(px).status_code for _ in range(4)] == [201, 201, 201, 429]

    def test_delay_adds_to_latency(self) -> None:
        with FakePX(rate_limit=2, limiter="leaky", burst=1, delay=True, latency=0.1) as px:
            started = time.monotonic()
            assert post(px).status_code == 201
            assert post(px).status_code == 201
            elapsed = time.monotonic() - started
            second = px.requests[1]
        assert second.delayed > 0.25
        assert elapsed >= 0.2 + second.delayed
