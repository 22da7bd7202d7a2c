"""Unit tests of the one outcome path (tracker/_callbacks.py ``Outcomes``): the
DeliveryError it builds, guarded callbacks, receipts released whatever a callback does,
callbacks reached from a callback's flush() run after it, and BaseExceptions contained on
sender threads but raised on the caller's. No sockets: a stub buffer records releases.
(Warnings' once-a-minute rule: test_health.py; callbacks end to end: test_callbacks.py.)"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

import pytest

from tracker import Config, CustomEvent, DeliveryError
from tracker._callbacks import MAX_CALLBACK_DEPTH, Outcomes, Warnings, mark_sender_thread
from tracker._jobs import Job, Receipt
from tracker.testing import FakeClock

from ._support import Recorder, unit_event


class ReleaseLog:
    """Stands in for the buffer a receipt goes back to: records the order of releases."""

    def __init__(self) -> None:
        self.released: list[int] = []

    def _release(self, receipt: Receipt) -> None:
        self.released.append(receipt.seq)


def job(n: int = 1) -> Job:
    return Job(unit_event(n), seq=n, worker=True)


def outcomes(**callbacks: Any) -> Outcomes:
    config = Config.from_options({"api_key": "k", "send": False, **callbacks}, {})
    return Outcomes(config, Warnings(FakeClock()))


def receipt(log: ReleaseLog, seq: int) -> Receipt:
    return Receipt(log, seq)  # type: ignore[arg-type]


def on_thread(target: Any, *, sender: bool) -> Optional[BaseException]:
    """Run ``target`` on a new thread (a sender of ours or not); what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        if sender:
            mark_sender_thread()
        try:
            target()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    return raised[0] if raised else None


class TestErrors:
    def test_failed_builds_the_delivery_error_from_the_job(self) -> None:
        recorder = Recorder()
        log = ReleaseLog()
        failed = job(3)
        failed.attempts, failed.last_status, failed.last_message = 4, 503, "busy"
        outcomes(on_error=recorder.on_error).failed(failed, "retries_exhausted", receipt(log, 3))
        ((got, error),) = recorder.events
        assert got is failed.event
        assert isinstance(error, DeliveryError)
        assert (error.reason, error.event_id, error.status_code) == (
            "retries_exhausted",
            "id-3",
            503,
        )
        assert (error.message, error.attempts) == ("busy", 4)
        assert log.released == [3]

    def test_dropped_events_get_an_error_with_only_reason_and_id(self) -> None:
        recorder = Recorder()
        outcomes(on_error=recorder.on_error).dropped(
            [unit_event(1), unit_event(2)], "queue_overflow"
        )
        assert recorder.ids() == ["id-1", "id-2"]
        assert recorder.reasons() == ["queue_overflow"] * 2
        assert all(e.status_code is None and e.attempts == 0 for e in recorder.errors)

    def test_unauthorized_warns_about_the_key(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING, logger="tracker"):
            outcomes().failed(job(), "unauthorized", receipt(ReleaseLog(), 1))
        assert "PX refused the API key (check api_key / PX_API_KEY)" in caplog.text

    def test_without_callbacks_the_receipt_is_released_at_once(self) -> None:
        log = ReleaseLog()
        plain = outcomes()
        plain.delivered(job(1), receipt(log, 1))
        plain.failed(job(2), "rejected", receipt(log, 2))
        plain.dropped([unit_event(3)], "shutdown")  # nothing to tell, nothing raised
        assert log.released == [1, 2]
        assert not plain.reports_errors


class TestGuards:
    def test_a_raising_callback_is_logged_and_its_receipt_still_released(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        log = ReleaseLog()

        def broken(_: CustomEvent) -> None:
            raise ValueError("boom")

        with caplog.at_level(logging.ERROR, logger="tracker"):
            outcomes(on_success=broken).delivered(job(), receipt(log, 1))
        assert log.released == [1]
        assert "on_success callback raised; the exception was ignored" in caplog.text

    def test_a_base_exception_reaches_the_callers_thread_after_the_receipt_went(self) -> None:
        log = ReleaseLog()

        def leave(_: CustomEvent, __: DeliveryError) -> None:
            raise SystemExit(3)

        told = outcomes(on_error=leave)
        raised = on_thread(lambda: told.failed(job(), "rejected", receipt(log, 1)), sender=False)
        assert isinstance(raised, SystemExit)
        assert log.released == [1]

    def test_a_base_exception_on_a_sender_thread_is_logged_not_raised(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        log = ReleaseLog()

        def interrupt(_: CustomEvent) -> None:
            raise KeyboardInterrupt

        told = outcomes(on_success=interrupt)
        with caplog.at_level(logging.ERROR, logger="tracker"):
            raised = on_thread(lambda: told.delivered(job(), receipt(log, 1)), sender=True)
        assert raised is None
        assert log.released == [1]
        assert "raised KeyboardInterrupt on a sender thread; ignored" in caplog.text

    def test_dropped_tells_every_event_before_raising_a_base_exception(self) -> None:
        seen: list[str] = []

        def leave(e: CustomEvent, _: DeliveryError) -> None:
            seen.append(e.event_id)
            raise SystemExit(1)

        told = outcomes(on_error=leave)
        raised = on_thread(
            lambda: told.dropped([unit_event(1), unit_event(2), unit_event(3)], "shutdown"),
            sender=False,
        )
        assert isinstance(raised, SystemExit)
        assert seen == ["id-1", "id-2", "id-3"]


class TestNesting:
    def test_a_callback_reached_from_a_callback_runs_after_it_returned(self) -> None:
        # What a flush() inside on_success does: it sends, and the next outcome is told
        # on the same thread. It must not run nested inside the first callback.
        log = ReleaseLog()
        order: list[str] = []
        holder: dict[str, Outcomes] = {}

        def on_success(e: CustomEvent) -> None:
            order.append(f"start {e.event_id}")
            if e.event_id == "id-1":
                holder["o"].delivered(job(2), receipt(log, 2))
                assert log.released == []  # deferred: neither run nor released yet
            order.append(f"end {e.event_id}")

        holder["o"] = told = outcomes(on_success=on_success)
        told.delivered(job(1), receipt(log, 1))
        assert order == ["start id-1", "end id-1", "start id-2", "end id-2"]
        assert log.released == [1, 2]

    def test_dropped_events_told_from_a_callback_nest_up_to_a_depth(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        # on_error tracking into a full queue calls on_error again, which tracks...
        depth = 0
        holder: dict[str, Outcomes] = {}

        def on_error(e: CustomEvent, _: DeliveryError) -> None:
            nonlocal depth
            depth += 1
            holder["o"].dropped([unit_event(depth + 1)], "queue_overflow")

        holder["o"] = told = outcomes(on_error=on_error)
        with caplog.at_level(logging.WARNING, logger="tracker"):
            told.dropped([unit_event(1)], "queue_overflow")
        assert depth == MAX_CALLBACK_DEPTH
        assert f"callbacks nested {MAX_CALLBACK_DEPTH} deep" in caplog.text
