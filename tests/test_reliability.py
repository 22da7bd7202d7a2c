"""Reliability: a fault soak, Retry-After windows, outages and concurrency.

Everything runs against FakePX on 127.0.0.1 with real sockets and real threads. What the
server saw (arrival and answer times, statuses, event ids) is the ground truth; the
tracker's own counters are checked against it and against their invariant
``tracked == delivered + failed + dropped + pending``, sampled from another thread.
"""

from __future__ import annotations

import bisect
import gc
import logging
import random
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from tracker import CustomEvent, DeliveryError, Stats, Tracker
from tracker.testing import CONNECTION_THREAD, FakePX, px_error

from ._support import (
    API_KEY,
    FAST_RETRY,
    PRODUCT_KEY,
    SLOW,
    InvariantSampler,
    refused_url,
)


class FaultyPX(FakePX):
    """FakePX plus a seeded share of 429s (with FakePX's Retry-After header), decided
    before FakePX's own faults (drops, 500s), so every fault keeps its own rate."""

    def __init__(self, *, rate_429: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        self.rate_429 = rate_429
        self._rng_429 = random.Random(options.get("seed"))

    def _decide(
        self, method: str, path: str, headers: Any, raw: bytes, now: float
    ) -> tuple[Optional[int], dict[str, str], Any, float]:
        if not self._script and self.rate_429 and self._rng_429.random() < self.rate_429:
            latency = self.latency + self._rng_429.uniform(0, self.latency_jitter)
            body = px_error(429, "Rate limit exceeded")
            return 429, self._retry_after_header(), body, latency
        return super()._decide(method, path, headers, raw, now)


def retry_after_violations(requests: list[Any], retry_after: float) -> list[tuple[float, float]]:
    """(429 answered_at, arrival) of every request that arrived inside a Retry-After
    window: after answered_at + 0.1 (requests already on their way: a sender descheduled
    between starting a request and its write, 62 ms once on 2 busy cores) and before
    answered_at + retry_after - 0.02."""
    arrivals = sorted(r.arrived_at for r in requests)
    found = []
    for r in requests:
        if r.status != 429:
            continue
        low, high = r.answered_at + 0.1, r.answered_at + retry_after - 0.02
        i = bisect.bisect_right(arrivals, low)
        j = bisect.bisect_left(arrivals, high)
        found += [(r.answered_at, arrival) for arrival in arrivals[i:j]]
    return found


def threads_since(baseline: set[threading.Thread]) -> tuple[list[str], int]:
    """Threads started since ``baseline`` and still alive: the names of all but FakePX's
    one-per-connection handler threads, and how many of those there are. Threads of
    earlier tests, still winding down, are left out either way. (Compared as objects:
    Python reuses the idents of ended threads.)"""
    new = [t for t in threading.enumerate() if t not in baseline]
    handlers = [t for t in new if t.name == CONNECTION_THREAD]
    return sorted(t.name for t in new if t not in handlers), len(handlers)


# -- the fault soak ---------------------------------------------------------------------------

RETRY_AFTER = 0.15
FLUSHES_PER_ROUND = 5


@dataclass
class Round:
    """What one round of the soak showed, reduced to small values (see memory check)."""

    name: str
    traced: bool
    tracked: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    unexpected: int = 0
    requests: int = 0
    answered_429: int = 0
    answered_500: int = 0
    dropped_connections: int = 0
    retry_after_violations: list[tuple[float, float]] = field(default_factory=list)
    flushes_ok: list[bool] = field(default_factory=list)
    threads: list[list[str]] = field(default_factory=list)
    handler_threads: list[int] = field(default_factory=list)
    traced_memory: int = 0
    # What was traced at the measurement, to say where memory grew if it did.
    snapshot: Optional[tracemalloc.Snapshot] = None


@dataclass
class Soak:
    events: int
    workers: int
    rounds: list[Round]
    stats: Stats
    errors: list[tuple[str, str]]
    samples: int
    broken_samples: list[Stats]


# Allocations of the test's own server side (FakePX's handler threads and sockets, which
# come and go with the connections that drops replace) and of the measuring itself. The
# client side (tracker, requests, urllib3, backoff) is what must not grow; a leak of
# connections or threads would show in the thread checks too.
SERVER_SIDE = [
    "*/socket.py",
    "*/socketserver.py",
    "*/http/server.py",
    "*/http/client.py",
    "*/threading.py",
    "*/email/*",
    "*/tracker/testing/*",
    "*/tracemalloc.py",
    __file__,
]


def client_side_memory() -> tuple[int, tracemalloc.Snapshot]:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, pattern) for pattern in SERVER_SIDE]
    )
    return sum(stat.size for stat in snapshot.statistics("filename")), snapshot


def run_round(
    t: Tracker, px: FakePX, name: str, events: int, baseline: set[threading.Thread]
) -> Round:
    result = Round(name=name, traced=tracemalloc.is_tracing(), tracked=events)
    ids: list[Optional[str]] = []
    per_flush = events // FLUSHES_PER_ROUND
    # FakePX shares this process: a garbage collection (tens of ms once it holds thousands
    # of records) pauses every thread, and would show as late arrivals after a 429. The
    # untraced round, where those are judged, runs without; the traced ones, measured for
    # memory, with it.
    pause_gc = not result.traced and gc.isenabled()
    if pause_gc:
        gc.disable()
    try:
        for batch in range(FLUSHES_PER_ROUND):
            for i in range(per_flush):
                n = batch * per_flush + i
                ids.append(t.track(f"user-{n % 97}", "soak", attributes={"round": name, "n": n}))
            result.flushes_ok.append(t.flush(timeout=300))
            names, handlers = threads_since(baseline)
            result.threads.append(names)
            result.handler_threads.append(handlers)
    finally:
        if pause_gc:
            gc.enable()
    requests = px.requests
    arrived = Counter(px.event_ids())
    expected = Counter(str(i) for i in ids)  # a None (dropped) can only be missing
    result.missing = sorted(expected - arrived)
    result.duplicated = {i: n for i, n in arrived.items() if n > 1}
    result.unexpected = sum((arrived - expected).values())
    result.requests = len(requests)
    result.answered_429 = sum(r.status == 429 for r in requests)
    result.answered_500 = sum(r.status == 500 for r in requests)
    result.dropped_connections = sum(r.status is None for r in requests)
    result.retry_after_violations = retry_after_violations(requests, RETRY_AFTER)
    # Forget everything this round allocated for checking, then measure.
    del requests, arrived, expected, ids
    px.clear()
    gc.collect()
    if result.traced:
        result.traced_memory, result.snapshot = client_side_memory()
    return result


@pytest.fixture(
    scope="class",
    params=[
        pytest.param(2_000, id="2k-events"),
        pytest.param(20_000, id="20k-events", marks=SLOW),
    ],
)
def soak(request: pytest.FixtureRequest) -> Iterator[Soak]:
    """Events through 10% 500s, 5% 429s (Retry-After 0.15 s), 2% dropped connections and
    1-5 ms of jittered latency, in three rounds of five flushes each: the first half of
    the events untraced, then two quarters under tracemalloc, to compare their memory
    (tracemalloc slows every thread down, too much to judge reaction times to a 429)."""
    events: int = request.param
    quiet = [logging.getLogger(name) for name in ("tracker", "urllib3")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # keep log capture (whatever its level) out of the memory check
        logger.setLevel(logging.WARNING)
    errors: list[tuple[str, str]] = []
    was_tracing = tracemalloc.is_tracing()
    baseline = set(threading.enumerate())
    try:
        with FaultyPX(
            fail_rate=0.10,
            rate_429=0.05,
            retry_after=RETRY_AFTER,
            drop_rate=0.02,
            latency=0.001,
            latency_jitter=0.004,
            seed=20240611,
        ) as px:
            with Tracker(
                API_KEY,
                product_key=PRODUCT_KEY,
                base_url=px.url,
                rate_limit=1000.0,
                on_error=lambda event, error: errors.append((event.event_id, error.reason)),
                **FAST_RETRY,
            ) as t:
                with InvariantSampler(t) as sampler:
                    rounds = [run_round(t, px, "untraced", events // 2, baseline)]
                    if not was_tracing:
                        tracemalloc.start()
                    rounds += [
                        run_round(t, px, name, events // 4, baseline) for name in ("warm", "again")
                    ]
                yield Soak(
                    events=events,
                    workers=t.config.workers,
                    rounds=rounds,
                    stats=t.stats(),
                    errors=errors,
                    samples=sampler.samples,
                    broken_samples=sampler.broken,
                )
    finally:
        if not was_tracing:
            tracemalloc.stop()
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


class TestFaultSoak:
    def test_every_flush_returns_true(self, soak: Soak) -> None:
        assert all(ok for r in soak.rounds for ok in r.flushes_ok)

    def test_every_event_id_arrives_exactly_once(self, soak: Soak) -> None:
        for r in soak.rounds:
            assert (r.name, r.missing, r.duplicated, r.unexpected) == (r.name, [], {}, 0)
        s = soak.stats
        assert (s.tracked, s.delivered, s.failed, s.dropped, s.pending) == (
            soak.events,
            soak.events,
            0,
            0,
            0,
        )
        assert soak.errors == []

    def test_all_three_faults_really_happened(self, soak: Soak) -> None:
        for r in soak.rounds:
            assert r.answered_429 > r.requests * 0.05 / 3, r
            assert r.answered_500 > r.requests * 0.10 / 3, r
            assert r.dropped_connections > 0, r

    def test_counters_match_what_the_server_answered(self, soak: Soak) -> None:
        s = soak.stats
        assert s.rate_limited == sum(r.answered_429 for r in soak.rounds)
        # Nothing failed for good, so every answer but a 201 was followed by one retry.
        assert s.retries == sum(
            r.answered_429 + r.answered_500 + r.dropped_connections for r in soak.rounds
        )

    def test_no_request_arrives_inside_a_retry_after_window(self, soak: Soak) -> None:
        first = soak.rounds[0]  # untraced: see the fixture
        assert first.answered_429 >= 10
        assert first.retry_after_violations == []

    def test_stats_invariant_holds_on_every_sample_taken_while_running(self, soak: Soak) -> None:
        assert soak.samples > 100
        assert soak.broken_samples == []

    def test_threads_do_not_grow_with_repeated_flushes(self, soak: Soak) -> None:
        # Senders come and go with the round trip (Little's law), never past the cap;
        # counted by name (unique per thread started), not by ident (which Python reuses).
        snapshots = [names for r in soak.rounds for names in r.threads]
        senders = [[n for n in names if n.startswith("px-tracker-")] for names in snapshots]
        assert all(1 <= len(names) <= soak.workers for names in senders), senders
        # One FakePX handler thread per open keep-alive connection; the tracker's pool
        # holds at most workers + 2, plus a few just closed by drops and not yet gone.
        handlers = [n for r in soak.rounds for n in r.handler_threads]
        assert max(handlers) <= soak.workers + 2 + 10, handlers

    def test_memory_does_not_grow_in_a_second_round(self, soak: Soak) -> None:
        _, warm, again = soak.rounds
        allowed = 32 * 1024 + 64 * again.tracked  # measured noise: a few KB
        growth = again.traced_memory - warm.traced_memory
        if growth >= allowed and again.snapshot is not None and warm.snapshot is not None:
            where = "\n".join(map(str, again.snapshot.compare_to(warm.snapshot, "lineno")[:10]))
        else:
            where = ""
        assert growth < allowed, (
            f"{growth} bytes more after another round (allowed {allowed})\n{where}"
        )


# -- Retry-After, measured at the server ------------------------------------------------------


class TestRetryAfter:
    def test_every_worker_waits_out_a_one_second_retry_after(self) -> None:
        with FakePX() as px:
            px.respond_next(429, headers={"Retry-After": "1"})
            with Tracker(
                API_KEY, product_key=PRODUCT_KEY, base_url=px.url, workers=8, **FAST_RETRY
            ) as t:
                ids = [t.track("u", "burst", attributes={"i": i}) for i in range(40)]
                assert t.flush(timeout=20)
                s = t.stats()
            requests = px.requests
            (limited,) = [r for r in requests if r.status == 429]
            after = sorted(r.arrived_at - limited.answered_at for r in requests)
            inside = [d for d in after if 0.05 < d < 1.0 - 0.02]
            assert inside == [], f"requests {inside} s after the 429"
            assert any(d >= 0.98 for d in after), "nothing was sent after the window"
            assert Counter(px.event_ids()) == Counter(ids)
            assert s.rate_limited == 1
            assert s.delivered == 40


# -- outages ----------------------------------------------------------------------------------


class TestOutages:
    def test_server_down_for_two_seconds_then_back_on_same_port_loses_nothing(self) -> None:
        errors: list[DeliveryError] = []
        first = FakePX().start()
        port = first.port
        second: Optional[FakePX] = None
        # Default max_retries (10) and max_retry_time; a shorter backoff than the default
        # (0.5 s doubling up to 3 s): 10 jittered waits outlast a 2 s outage all but
        # ~5e-6 of the time per event, and the last wait after the restart is <= 3 s.
        t = Tracker(
            API_KEY,
            product_key=PRODUCT_KEY,
            base_url=first.url,
            backoff_base=0.5,
            backoff_max=3.0,
            on_error=lambda event, error: errors.append(error),
        )
        try:
            warm = [t.track("u", "before_outage", attributes={"i": i}) for i in range(10)]
            assert t.flush(timeout=10)  # keep-alive connections now open, soon dead
            assert Counter(first.event_ids()) == Counter(warm)
            first.stop()
            during = [t.track("u", "during_outage", attributes={"i": i}) for i in range(20)]
            time.sleep(2.0)
            assert t.stats().pending == 20
            second = FakePX(port=port).start()
            assert t.flush(timeout=30)
            assert Counter(second.event_ids()) == Counter(during)
            s = t.stats()
            assert (s.tracked, s.delivered, s.failed, s.dropped, s.pending) == (30, 30, 0, 0, 0)
            assert s.retries >= 20
            assert errors == []
        finally:
            t.shutdown(timeout=0)
            first.stop()
            if second is not None:
                second.stop()

    def test_outage_longer_than_max_retry_time_fails_each_event_exactly_once(self) -> None:
        errors: list[tuple[CustomEvent, DeliveryError]] = []
        with Tracker(
            API_KEY,
            product_key=PRODUCT_KEY,
            base_url=refused_url(),
            max_retry_time=1.0,
            max_retries=100,  # so that time, not the count, ends the retries
            on_error=lambda event, error: errors.append((event, error)),
            **FAST_RETRY,
        ) as t:
            ids = [t.track("u", "never_delivered", attributes={"i": i}) for i in range(20)]
            started = time.monotonic()
            assert t.flush(timeout=20)
            took = time.monotonic() - started
            s = t.stats()
        assert 0.8 <= took <= 1.0 + 4.0, took
        assert Counter(error.event_id for _, error in errors) == Counter(ids)
        assert all(event.event_id == error.event_id for event, error in errors)
        assert {error.reason for _, error in errors} == {"retries_exhausted"}
        assert all(error.status_code is None for _, error in errors)
        assert all(error.attempts > 2 for _, error in errors)
        assert dict(s.failed_by_reason) == {
            "rejected": 0,
            "unauthorized": 0,
            "retries_exhausted": 20,
        }
        assert (s.tracked, s.delivered, s.failed, s.dropped, s.pending) == (20, 0, 20, 0, 0)


# -- concurrency ------------------------------------------------------------------------------


class TestCallbacksThatFlush:
    """API.md: a callback may call track(), flush() or stats(); on_success runs after every
    2xx, on_error once for every event that will never be delivered."""

    def test_callbacks_flushing_at_once_on_two_workers_do_not_wait_for_each_other(
        self,
    ) -> None:
        both_inside = threading.Barrier(2, timeout=10)
        results: list[tuple[bool, float]] = []
        holder: dict[str, Tracker] = {}

        def on_success(event: CustomEvent) -> None:
            both_inside.wait()  # two callbacks running at the same time, one per worker
            started = time.monotonic()
            flushed = holder["t"].flush(timeout=5)
            results.append((flushed, time.monotonic() - started))

        # A round trip long enough for two requests in flight: two senders run.
        with FakePX(latency=0.05) as px:
            holder["t"] = t = Tracker(
                API_KEY, product_key=PRODUCT_KEY, base_url=px.url, workers=2, on_success=on_success
            )
            try:
                t.track("u", "first")
                t.track("u", "second")
                assert t.flush(timeout=20)
            finally:
                t.shutdown(timeout=0)
        assert [flushed for flushed, _ in results] == [True, True], results
        assert all(took < 2.0 for _, took in results), results

    @pytest.mark.parametrize("outcome", ["delivered", "rejected"])
    def test_every_event_gets_its_one_callback_when_callbacks_flush(self, outcome: str) -> None:
        calls: Counter[str] = Counter()
        holder: dict[str, Tracker] = {}

        def callback(event: CustomEvent, error: Optional[DeliveryError] = None) -> None:
            calls[event.event_id] += 1
            holder["t"].flush(timeout=10)

        with FakePX() as px:
            px.hold()  # every event is queued before the first one is answered
            if outcome == "rejected":
                px.respond_next(400, times=20)
            holder["t"] = t = Tracker(
                API_KEY,
                product_key=PRODUCT_KEY,
                base_url=px.url,
                workers=1,
                on_success=callback,
                on_error=callback,
            )
            try:
                ids = [t.track("u", "chained", attributes={"i": i}) for i in range(20)]
                px.release()
                assert t.flush(timeout=30)
            finally:
                t.shutdown(timeout=0)
        assert calls == Counter(ids)


class TestConcurrency:
    PRODUCERS = 8
    PER_PRODUCER = 150

    def test_producers_flushers_and_reentrant_callbacks_neither_deadlock_nor_miscount(
        self,
    ) -> None:
        lock = threading.Lock()
        outcome: dict[str, list[str]] = {}  # event id -> every callback seen for it
        echoes: list[Optional[str]] = []
        callback_flushes: list[bool] = []
        holder: dict[str, Tracker] = {}

        def react(event: CustomEvent, what: str) -> None:
            with lock:
                outcome.setdefault(event.event_id, []).append(what)
            if event.event_name != "primary":
                return
            t = holder["t"]
            echoes.append(
                t.track(event.identify_id, f"echo_{what}", attributes={"of": event.event_id})
            )
            t.stats()
            if event.attributes and event.attributes["i"] % 5 == 0:
                callback_flushes.append(t.flush(timeout=10))

        def on_success(event: CustomEvent) -> None:
            react(event, "delivered")

        def on_error(event: CustomEvent, error: DeliveryError) -> None:
            react(event, error.reason)

        with FakePX(fail_rate=0.15, latency=0.001, latency_jitter=0.004, seed=99) as px:
            t = Tracker(
                API_KEY,
                product_key=PRODUCT_KEY,
                base_url=px.url,
                workers=4,
                rate_limit=None,
                max_retries=1,
                on_success=on_success,
                on_error=on_error,
                **FAST_RETRY,
            )
            holder["t"] = t
            try:
                with InvariantSampler(t, pause=0.0005) as sampler:
                    primaries: list[list[Optional[str]]] = [[] for _ in range(self.PRODUCERS)]
                    done = threading.Event()
                    flush_results: list[bool] = []

                    def produce(k: int) -> None:
                        for i in range(self.PER_PRODUCER):
                            primaries[k].append(
                                t.track(f"user-{k}", "primary", attributes={"i": i, "k": k})
                            )

                    def flusher() -> None:
                        while not done.is_set():
                            flush_results.append(t.flush(timeout=20))

                    producers = [
                        threading.Thread(target=produce, args=(k,), name=f"producer-{k}")
                        for k in range(self.PRODUCERS)
                    ]
                    flushers = [
                        threading.Thread(target=flusher, name=f"flusher-{k}") for k in range(2)
                    ]
                    for thread in producers + flushers:
                        thread.start()
                    for thread in producers:
                        thread.join(60)
                    done.set()
                    for thread in flushers:
                        thread.join(60)
                    stuck = [th.name for th in producers + flushers if th.is_alive()]
                    assert stuck == [], f"deadlocked: {stuck}"
                    assert t.flush(timeout=60)
                    s = t.stats()
            finally:
                t.shutdown(timeout=5)
            arrived = Counter(px.event_ids())

        primary_ids = [i for ids in primaries for i in ids]
        assert len(primary_ids) == self.PRODUCERS * self.PER_PRODUCER
        assert None not in primary_ids
        assert flush_results
        assert all(flush_results)
        assert callback_flushes
        assert all(callback_flushes)
        assert sampler.samples > 50
        assert sampler.broken == []
        # Exactly one callback per event, primaries and echoes alike.
        assert {i: len(seen) for i, seen in outcome.items() if len(seen) != 1} == {}
        assert set(primary_ids) <= set(outcome)
        assert None not in echoes
        assert len(echoes) == len(primary_ids)
        assert set(outcome) == set(primary_ids) | set(echoes)
        delivered = {i for i, seen in outcome.items() if seen == ["delivered"]}
        failed = Counter(seen[0] for seen in outcome.values() if seen != ["delivered"])
        assert set(failed) == {"retries_exhausted"}  # 15% 500s, one retry: ~2% fail
        assert arrived == Counter(delivered)
        assert s.tracked == 2 * len(primary_ids)
        assert (s.delivered, s.failed, s.dropped, s.pending) == (
            len(delivered),
            sum(failed.values()),
            0,
            0,
        )
