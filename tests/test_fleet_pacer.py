"""RedisPacer's own logic (grants, pauses, fallback) on FakeClock, and the limiter option.

The Redis answers here are scripted by a stub client: these tests are about what the
pacer does with them. What Redis itself does is in tests/test_fleet.py, on a real server.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from typing import Any, Optional

import pytest

from tracker._config import Config
from tracker._fleet import GRANT_MAX, RETRY_MIN, RedisPacer, fingerprint
from tracker.errors import ConfigError
from tracker.testing import FakeClock

redis = pytest.importorskip("redis")

KEY = "secret-api-key-0001"


class StubRedis:
    """Answers evalsha from a script of answers; NOSCRIPT until script_load."""

    def __init__(self) -> None:
        self.answers: deque[list[int]] = deque()
        self.calls: list[tuple[Any, ...]] = []
        self.loaded = False
        self.fail: Optional[Exception] = None

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> list[int]:
        self.calls.append(args)
        if self.fail is not None:
            raise self.fail
        if not self.loaded:
            raise redis.exceptions.NoScriptError("No matching script. Please use EVAL.")
        return self.answers.popleft()

    def script_load(self, script: str) -> str:
        self.loaded = True
        return "sha"

    def wanted(self) -> int:
        return int(self.calls[-1][3])  # KEYS (2), then interval, want, pause...

    def published(self) -> float:
        return int(self.calls[-1][4]) / 1e6


def make(rate: float = 200.0) -> tuple[RedisPacer, StubRedis, FakeClock]:
    clock = FakeClock()
    stub = StubRedis()
    config = Config.from_options(
        {"api_key": KEY, "rate_limit": rate, "limiter": stub, "clock": clock}
    )
    return RedisPacer(config), stub, clock


def refill(pacer: RedisPacer, stub: StubRedis, answer: list[int]) -> None:
    assert pacer.wants_refill()
    stub.answers.append(answer)
    pacer.refill()


def test_grants_grow_while_demand_lasts_and_shrink_when_it_stops() -> None:
    pacer, stub, clock = make()
    now = clock.monotonic()
    assert pacer.turn(now) > 0  # nothing granted yet: a round trip first
    refill(pacer, stub, [1, 0, 0, 1])
    assert len(stub.calls) == 2  # NOSCRIPT, then loaded and called again
    assert stub.wanted() == 1
    assert pacer.turn(now) == 0.0
    # Straight on: demand goes on, so the next grant is bigger.
    assert pacer.turn(now) > 0
    refill(pacer, stub, [2, 0, 0, 1])
    assert stub.wanted() == 2
    assert pacer.turn(now) == 0.0
    # The last slot of a grant not due yet: the next grant is asked for meanwhile.
    assert pacer.turn(now) == pytest.approx(0.005)
    refill(pacer, stub, [GRANT_MAX, 10_000, 0, 1])
    assert stub.wanted() == GRANT_MAX
    # Every slot evenly spaced at the rate, in order, none early.
    taken = []
    for _ in range(100):
        wait = pacer.turn(clock.monotonic())
        if wait == 0.0:
            taken.append(clock.monotonic())
            if len(taken) == 1 + GRANT_MAX:
                break
        else:
            clock.advance(wait)
    gaps = [round(b - a, 6) for a, b in zip(taken, taken[1:])]
    assert gaps == [0.005] * GRANT_MAX
    assert pacer.wants_refill()  # with one slot left, the next grant was asked for
    # A quiet second later the unused grant is stale, and one slot is enough.
    refill(pacer, stub, [GRANT_MAX, 0, 0, 1])
    clock.advance(1.0)
    assert pacer.turn(clock.monotonic()) > 0
    refill(pacer, stub, [1, 0, 0, 1])
    assert stub.wanted() == 1


def test_a_full_schedule_means_waiting_without_asking_again() -> None:
    pacer, stub, clock = make()
    pacer.turn(clock.monotonic())
    refill(pacer, stub, [0, 300_000, 0, 3])  # no slot within the horizon for 0.3 s
    wait = pacer.turn(clock.monotonic())
    assert wait == pytest.approx(0.3, abs=1e-6)
    assert not pacer.wants_refill()
    clock.advance(wait)
    assert pacer.turn(clock.monotonic()) > 0
    assert pacer.wants_refill()


def test_a_pause_read_from_redis_pauses_this_tracker() -> None:
    pacer, stub, clock = make()
    pacer.turn(clock.monotonic())
    refill(pacer, stub, [0, 1_000_000, 1_000_000, 2])
    now = clock.monotonic()
    assert pacer.paused_until() == pytest.approx(now + 1.0)
    assert pacer.turn(now) == pytest.approx(1.0)
    assert not pacer.wants_refill()


def test_a_429_here_is_written_to_redis_for_the_others() -> None:
    pacer, stub, clock = make()
    pacer.turn(clock.monotonic())
    refill(pacer, stub, [2, 0, 0, 1])
    now = clock.monotonic()
    pacer.rate_limited(now, now, 2.5)
    assert pacer.turn(now) == pytest.approx(2.5)  # granted slots are void in a pause
    refill(pacer, stub, [0, 2_500_000, 2_500_000, 1])
    assert stub.published() == pytest.approx(2.5)
    assert not pacer.wants_refill()  # published once


def test_fallback_to_the_last_known_share_then_rejoin(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tracker")
    pacer, stub, clock = make()
    pacer.turn(clock.monotonic())
    refill(pacer, stub, [1, 0, 0, 4])  # four trackers share the limit
    assert pacer.turn(clock.monotonic()) == 0.0
    assert pacer.fallbacks() == 0
    stub.fail = redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1.")
    pacer.turn(clock.monotonic())
    pacer.refill()
    assert pacer.fallbacks() == 1
    assert pacer.rate(clock.monotonic()) == pytest.approx(50.0)  # 200 / 4
    assert pacer.turn(clock.monotonic()) == 0.0  # local pacing: no Redis needed
    assert not pacer.wants_refill()
    # Retried after RETRY_MIN, still down: same episode, no second warning, longer backoff.
    clock.advance(RETRY_MIN)
    assert pacer.turn(clock.monotonic()) > 0
    assert pacer.wants_refill()
    pacer.refill()
    assert pacer.fallbacks() == 1
    clock.advance(RETRY_MIN)  # the backoff doubled: not retried yet
    pacer.turn(clock.monotonic())
    assert not pacer.wants_refill()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "pacing locally at 50 req/s" in warnings[0].getMessage()
    # Redis is back: the next retry rejoins the shared limit.
    stub.fail = None
    clock.advance(2 * RETRY_MIN)
    assert pacer.turn(clock.monotonic()) > 0
    refill(pacer, stub, [1, 0, 0, 4])
    assert pacer.rate(clock.monotonic()) == 200.0
    assert pacer.turn(clock.monotonic()) == 0.0
    assert pacer.fallbacks() == 1
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text


def test_the_key_is_named_by_a_fingerprint_only() -> None:
    pacer, stub, clock = make()
    pacer.turn(clock.monotonic())
    refill(pacer, stub, [1, 0, 0, 1])
    keys = stub.calls[-1][:2]
    assert all(KEY not in k for k in keys)
    assert all(fingerprint(KEY, Config.from_options({"api_key": KEY}).endpoint) in k for k in keys)
    assert fingerprint(KEY, "https://a/v1") != fingerprint(KEY, "https://b/v1")
    assert fingerprint(KEY, "https://a/v1") != fingerprint(KEY + "x", "https://a/v1")
    assert KEY not in repr(pacer)


# -- the option -------------------------------------------------------------------------


def test_limiter_urls_are_redacted_in_reprs_and_errors() -> None:
    for url in ("redis://:s3cret@host:6379/0", "rediss://user:s3cret@host/0?password=s3cret"):
        config = Config.from_options({"api_key": KEY, "limiter": url})
        assert "s3cret" not in repr(config)
        assert "***" in repr(config)
    with pytest.raises(ConfigError) as info:
        Config.from_options({"api_key": KEY, "limiter": "http://:s3cret@host/0"})
    assert "s3cret" not in str(info.value)
    assert "redis://" in str(info.value)
    with pytest.raises(ConfigError, match=r"redis\.Redis"):
        Config.from_options({"api_key": KEY, "limiter": 42})


def test_limiter_from_the_environment_and_needs_a_rate() -> None:
    config = Config.from_options({"api_key": KEY}, environ={"PX_LIMITER": " redis://h:1/0 "})
    assert config.limiter == "redis://h:1/0"
    with pytest.raises(ConfigError, match="rate_limit"):
        Config.from_options({"api_key": KEY, "limiter": "redis://h/0", "rate_limit": None})


def test_without_redis_py_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigError, match=r"px-tracker\[redis\]"):
        Config.from_options({"api_key": KEY, "limiter": "redis://localhost:6379/0"})
