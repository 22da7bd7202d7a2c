"""asyncio: aflush/ashutdown and ``async with`` deliver like flush/shutdown and never
block the event loop, even while PX hangs."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

import tracker
from tracker import Tracker
from tracker.testing import FakePX

from ._support import API_KEY, PRODUCT_KEY

MakeTracker = Callable[..., Tracker]


def test_events_tracked_in_a_running_loop_arrive_after_aflush(
    fake_px: FakePX, make_tracker: MakeTracker
) -> None:
    t = make_tracker(fake_px.url)

    async def main() -> tuple[list[Any], bool]:
        ids = [t.track(f"user-{i}", "async signup") for i in range(20)]
        return ids, await t.aflush(timeout=30)

    ids, flushed = asyncio.run(main())
    assert flushed is True
    assert sorted(fake_px.event_ids()) == sorted(ids)
    assert t.stats().delivered == 20
    assert t.stats().pending == 0


def test_the_loop_keeps_running_while_aflush_waits_on_a_hanging_px(
    fake_px: FakePX, make_tracker: MakeTracker
) -> None:
    """A heartbeat task ticks while aflush waits on a held request; it is the heartbeat
    that lets PX answer, after 20 ticks: an aflush that blocked the loop would never let
    it tick, and would come back False at its deadline with no tick counted. No tick is
    late by more than 50 ms (the issue's bound; the wait runs off the loop's thread)."""
    fake_px.hold()
    t = make_tracker(fake_px.url, workers=1)
    seen: dict[str, Any] = {"ticks": 0}
    late: list[float] = []  # each tick's delay past its 10 ms sleep

    async def main() -> bool:
        t.track("user-1", "held")
        while fake_px.in_progress < 1:  # the sender's request has reached PX, held there
            await asyncio.sleep(0.005)
        flushing = asyncio.ensure_future(t.aflush(timeout=60))

        async def heartbeat() -> None:
            loop = asyncio.get_running_loop()
            while not flushing.done():
                seen["ticks"] += 1
                if seen["ticks"] == 20:
                    seen["in_flight_at_20"] = fake_px.in_progress
                    seen["flush_done_at_20"] = flushing.done()
                    fake_px.release()
                before = loop.time()
                await asyncio.sleep(0.01)
                late.append(loop.time() - before - 0.01)

        beating = asyncio.ensure_future(heartbeat())
        result = await flushing
        await beating
        return result

    assert asyncio.run(main()) is True
    assert seen["ticks"] >= 20
    assert max(late) <= 0.05, late
    assert seen["flush_done_at_20"] is False
    assert seen["in_flight_at_20"] == 1  # still held: nothing answered before the release
    assert len(fake_px.events) == 1


def test_aflush_returns_false_past_its_timeout_while_px_hangs(
    fake_px: FakePX, make_tracker: MakeTracker
) -> None:
    fake_px.hold()
    t = make_tracker(fake_px.url, workers=1)
    ticks = 0

    async def main() -> bool:
        nonlocal ticks
        t.track("user-1", "held")
        flushing = asyncio.ensure_future(t.aflush(timeout=0.3))
        while not flushing.done():
            ticks += 1
            await asyncio.sleep(0.01)
        return flushing.result()

    assert asyncio.run(main()) is False
    assert ticks > 1  # the loop ran while it waited
    assert t.stats().pending == 1
    fake_px.release()
    assert t.flush(timeout=30) is True
    assert len(fake_px.events) == 1


def test_async_with_delivers_and_shuts_down(fake_px: FakePX) -> None:
    async def main() -> Tracker:
        async with Tracker(
            API_KEY, product_key=PRODUCT_KEY, base_url=fake_px.url, flush_at_exit=False
        ) as t:
            for i in range(5):
                t.track(f"user-{i}", "inside async with")
        return t

    t = asyncio.run(main())
    s = t.stats()
    assert (s.tracked, s.delivered, s.pending, s.dropped) == (5, 5, 0, 0)
    assert len(fake_px.find("inside async with")) == 5
    assert t.track("user-late", "after the block") is None  # shut down
    assert t.stats().dropped_by_reason["shutdown"] == 1


def test_ashutdown_drops_counted_what_it_cannot_send(
    fake_px: FakePX, make_tracker: MakeTracker
) -> None:
    fake_px.hold()
    t = make_tracker(fake_px.url, workers=1)

    async def main() -> bool:
        for i in range(3):
            t.track(f"user-{i}", "never answered")
        return await t.ashutdown(timeout=0.3)

    assert asyncio.run(main()) is False
    s = t.stats()
    assert s.pending == 0
    assert s.dropped == s.dropped_by_reason["shutdown"] == 3  # the one in flight included
    assert s.tracked == s.delivered + s.failed + s.dropped + s.pending
    fake_px.release()


def test_cancelling_aflush_stops_the_wait_not_the_delivery(
    fake_px: FakePX, make_tracker: MakeTracker
) -> None:
    fake_px.hold()
    t = make_tracker(fake_px.url, workers=1)

    async def main() -> bool:
        t.track("user-1", "cancelled wait")
        flushing = asyncio.ensure_future(t.aflush())
        while fake_px.in_progress < 1:
            await asyncio.sleep(0.01)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        fake_px.release()
        return await t.aflush(timeout=30)

    assert asyncio.run(main()) is True
    assert len(fake_px.find("cancelled wait")) == 1


def test_aflush_rejects_a_bad_timeout(fake_px: FakePX, make_tracker: MakeTracker) -> None:
    t = make_tracker(fake_px.url)
    with pytest.raises(ValueError, match="'timeout' must be None or a number >= 0"):
        asyncio.run(t.aflush(timeout=-1))


def test_module_level_aflush_and_ashutdown(fake_px: FakePX, fresh_default: None) -> None:
    async def main() -> tuple[bool, bool]:
        tracker.configure(
            API_KEY, product_key=PRODUCT_KEY, base_url=fake_px.url, flush_at_exit=False
        )
        tracker.track("user-1", "module level")
        flushed = await tracker.aflush(timeout=30)
        assert len(fake_px.find("module level")) == 1
        tracker.track("user-2", "module level")
        return flushed, await tracker.ashutdown(timeout=30)

    assert asyncio.run(main()) == (True, True)
    assert len(fake_px.find("module level")) == 2
    assert tracker.stats().delivered == 2
    assert tracker.track("user-3", "module level") is None  # that tracker is shut down


def test_module_level_ashutdown_without_a_tracker_is_true(fresh_default: None) -> None:
    assert asyncio.run(tracker.ashutdown()) is True
