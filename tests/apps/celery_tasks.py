"""A Celery tasks module for tests/test_celery.py, as a user would write it: the
process-wide tracker configured at import, one task that tracks one event, and no signal
handler, no flush anywhere.

Test instrumentation, which the tracker needs none of: each task appends the id of the
event it tracked to ``PX_TEST_BROKER_DIR/tracked`` (one short write: appends do not mix),
and each process appends ``exiting <pid>`` to ``PX_TEST_BROKER_DIR/exits`` when it starts
to leave (a prefork child on ``worker_process_shutdown``, connected before the tracker so
that it runs first; the worker's main process at exit, registered after the tracker so
that it runs first), so that the test can hold PX until then. With
``PX_TEST_TRACKER_FIRST=1`` the tracker is configured before Celery is imported.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Any, Optional

import tracker

BROKER_DIR = Path(os.environ["PX_TEST_BROKER_DIR"])


def configure() -> None:
    tracker.configure(
        api_key="k-celery",
        product_key="AP-CELERY-1",
        base_url=os.environ["PX_TEST_BASE_URL"],
        workers=int(os.environ.get("PX_TEST_SENDERS", "2")),
        exit_timeout=float(os.environ.get("PX_TEST_EXIT_TIMEOUT", "5")),
    )


def note(path: Path, line: str) -> None:
    with path.open("a") as file:
        file.write(f"{line}\n")


def note_exit(**_: Any) -> None:
    note(BROKER_DIR / "exits", f"exiting {os.getpid()}")


if os.environ.get("PX_TEST_TRACKER_FIRST"):
    configure()

from celery import signals  # noqa: E402
from celery_broker import make_app  # noqa: E402

signals.worker_process_shutdown.connect(note_exit, weak=False)

if not os.environ.get("PX_TEST_TRACKER_FIRST"):
    configure()

atexit.register(note_exit)

app = make_app(BROKER_DIR)


@app.task(name="px.track_one")
def track_one(n: int) -> Optional[str]:
    event_id = tracker.track(f"user-{n}", "celery_task", attributes={"n": n, "pid": os.getpid()})
    note(BROKER_DIR / "tracked", str(event_id))
    return event_id
