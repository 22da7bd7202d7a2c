"""Closed-loop sending against real limiters: no burst after a pause, learning a limit,
concurrency from the round trip (issue 11). Rates are measured at the server."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import pytest

from tracker import Tracker
from tracker.testing import FakePX

from ._nginx import Nginx, nginx_fixture  # noqa: F401 (the fixture)
from ._support import API_KEY, PRODUCT_KEY, SLOW

RUNS_SLOW = 10

# The ten-run variants (the 10 runs of 2,000 events per limiter, ~5 min) run with
# -m slow (or PX_SLOW=1); one run of each goal runs in every suite. Held 10 times in a row
# on 2 shared cores before they left the slow mark (and every run of the ten-run variants).


def slow(test: Callable[..., None]) -> Callable[..., None]:
    """The long-variant marks of test_reliability.py, with this module's own timeout (the
    closest timeout mark is the one pytest-timeout uses, so it goes on first)."""
    test = pytest.mark.timeout(900)(test)
    for mark in SLOW:
        test = mark(test)
    return test


def deliver(url: str, events: int, **options: Any) -> tuple[float, Tracker]:
    """Track ``events`` at once with the default settings (unless given), flush; the
    delivery rate from the first track() to the end of the flush, and the tracker."""
    options.setdefault("flush_at_exit", False)
    t = Tracker(API_KEY, product_key=PRODUCT_KEY, base_url=url, **options)
    started = time.monotonic()
    for i in range(events):
        t.track("u", "paced", attributes={"i": i})
    assert t.flush(timeout=120)
    took = time.monotonic() - started
    assert t.stats().delivered == events
    return events / took, t


def most_in_window(arrivals: list[float], width: float) -> int:
    arrivals = sorted(arrivals)
    most, j = 0, 0
    for i, start in enumerate(arrivals):
        j = max(j, i)
        while j < len(arrivals) and arrivals[j] < start + width:
            j += 1
        most = max(most, j - i)
    return most


class TestAfterAPause:
    def test_no_burst_when_a_retry_after_pause_ends(self) -> None:
        with FakePX() as px:
            t = Tracker(API_KEY, product_key=PRODUCT_KEY, base_url=px.url, flush_at_exit=False)
            try:
                t.track("u", "warm-up")
                assert t.flush(10)
                px.respond_next(429, headers={"Retry-After": "1"})
                for i in range(300):
                    t.track("u", "after", attributes={"i": i})
                assert t.flush(30)
                stats = t.stats()
            finally:
                t.shutdown(0)
            requests = px.requests
        (limited,) = [r for r in requests if r.status == 429]
        after = [r.arrived_at for r in requests if r.arrived_at > limited.answered_at]
        assert min(after) - limited.answered_at >= 1.0 - 0.02  # the pause held
        # The pacing allows at most 200/s after a pause, one at a time (no burst credit):
        # 1 + 200 * 0.05 requests in any 50 ms, plus one for a scheduling hiccup. Without
        # re-planning, the slots that came due during the pause went out together (43-45).
        assert most_in_window(after, 0.05) <= 1 + 10 + 1
        assert stats.rate_limited == 1
        assert stats.send_rate is not None
        assert stats.send_rate < 200.0  # backed off, visible to operators


class TestLearningTheLimit:
    def test_settles_under_a_limit_below_rate_limit(self) -> None:
        # The server admits 100/s with no burst at all; rate_limit says 200. The first
        # seconds are the search (a few 429s, each pausing everyone); what is asserted is
        # where it settles: the accepted rate over the arrivals after SETTLE seconds.
        settle = 4.0
        with FakePX(rate_limit=100, limiter="leaky", burst=0, retry_after=None) as px:
            _, t = deliver(px.url, 1200)
            stats = t.stats()
            t.shutdown(0)
            requests = px.requests
        start = min(r.arrived_at for r in requests)
        later = [r for r in requests if r.arrived_at >= start + settle]
        accepted = [r.arrived_at for r in later if r.status < 300]
        settled = (len(accepted) - 1) / (max(accepted) - min(accepted))
        limited = sum(r.status == 429 for r in requests)
        assert settled >= 0.75 * 100, settled  # the goal for a limiter with no burst
        assert sum(r.status == 429 for r in later) / len(later) < 0.02, limited
        assert limited / len(requests) < 0.03, limited
        assert stats.send_rate is not None
        # Learned: far below rate_limit (200), near the server's 100/s. Probing past the
        # refused rate is how the limit is found (README, Pacing), at 0.2/s per second, so
        # at the end of the run the rate may stand a few percent above 100, not more.
        assert stats.send_rate <= 1.05 * 100


class TestRoundTrip:
    @pytest.mark.parametrize(
        ("latency", "jitter"),
        [(0.15, 0.0), (0.3, 0.0), (0.05, 0.2)],
        ids=["150ms", "300ms", "50-250ms"],
    )
    def test_200_per_second_at_long_round_trips(self, latency: float, jitter: float) -> None:
        # Round trips that vary, as over the internet: the senders are not sized on the
        # shortest one (that delivered ~116/s of 200 at 50-250 ms in a simulation).
        with FakePX(rate_limit=200, latency=latency, latency_jitter=jitter) as px:
            rate, t = deliver(px.url, 2000)
            t.shutdown(0)
            limited = sum(r.status == 429 for r in px.requests)
        assert rate >= 180, rate
        assert limited == 0

    def test_threads_follow_the_round_trip(self) -> None:
        with FakePX(latency=0.1) as px:
            t = Tracker(API_KEY, product_key=PRODUCT_KEY, base_url=px.url, flush_at_exit=False)
            try:
                for i in range(400):
                    t.track("u", "e", attributes={"i": i})
                assert t.flush(30)
                most = max(_in_flight_peaks(px))
            finally:
                t.shutdown(0)
        # Little's law: 200/s x 0.1 s = 20 in flight; with headroom, not the cap of 64.
        assert 15 <= most <= 40, most


def _in_flight_peaks(px: FakePX) -> list[int]:
    spans = [(r.arrived_at, r.answered_at) for r in px.requests]
    return [sum(1 for a, b in spans if a <= start < b) for start, _ in spans]


NginxFactory = Callable[..., Nginx]


def run_against_nginx(
    nginx: NginxFactory, burst: int, retry_after: Optional[int], events: int = 2000
) -> tuple[float, float]:
    server = nginx(rate=200, burst=burst, nodelay=True, retry_after=retry_after)
    rate, t = deliver(server.url, events)
    t.shutdown(0)
    records = server.records(at_least=events)
    share = sum(r.status == 429 for r in records) / len(records)
    return rate, share


class TestRealNginx:
    """nginx ``limit_req`` at 200 r/s keyed on the API key: a limiter nobody here wrote."""

    @pytest.mark.parametrize("retry_after", [1, None], ids=["retry-after", "no-retry-after"])
    def test_burst_20_nodelay(self, nginx: NginxFactory, retry_after: Optional[int]) -> None:
        rate, share = run_against_nginx(nginx, 20, retry_after)
        assert rate >= 180, rate
        assert share < 0.01, share

    def test_burst_0(self, nginx: NginxFactory) -> None:
        rate, share = run_against_nginx(nginx, 0, 1)
        assert rate >= 150, rate
        assert share < 0.02, share

    @slow
    @pytest.mark.parametrize("retry_after", [1, None], ids=["retry-after", "no-retry-after"])
    def test_burst_20_nodelay_ten_runs(
        self, nginx: NginxFactory, retry_after: Optional[int]
    ) -> None:
        results = [run_against_nginx(nginx, 20, retry_after) for _ in range(RUNS_SLOW)]
        assert all(rate >= 180 and share < 0.01 for rate, share in results), results

    @slow
    def test_burst_0_ten_runs(self, nginx: NginxFactory) -> None:
        results = [run_against_nginx(nginx, 0, retry) for retry in [1, None] * (RUNS_SLOW // 2)]
        assert all(rate >= 150 and share < 0.02 for rate, share in results), results


@pytest.fixture
def nginx(nginx_fixture: NginxFactory) -> NginxFactory:  # noqa: F811 (the harness's)
    return nginx_fixture
