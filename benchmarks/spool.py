"""What the durable spool costs: track() with and without it, delivery rate, disk per event.

    python -m benchmarks.spool [--events N] [--reps R] [--json]

- track(): the caller's time per call without a spool, with one at the default
  interval (goal: within 1.5x) and at ``spool_interval=0`` (reported), against a dead
  server so the events stay pending (and the spool keeps writing them).
- delivery: events/s from track() to FakePX (a separate process) with and without a
  spool at the default interval (goal: >= 0.9x).
- disk: bytes per spooled event (the files' size over the events they hold, while the
  events wait).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Optional

from benchmarks._common import (
    EVENT_NAME,
    IDENTIFY_ID,
    ServerProcess,
    attributes,
    dead_url,
    log,
    our_tracker,
    wait_until,
)


def _spool_bytes(directory: str) -> int:
    return sum(
        os.path.getsize(os.path.join(directory, name))
        for name in os.listdir(directory)
        if ".spool" in name and not name.endswith(".lock")
    )


def track_cost(n: int, spool: Optional[str], interval: float) -> dict[str, float]:
    """Seconds per track() call; with a spool also disk bytes per event once written."""
    options: dict[str, Any] = {
        "max_queue_size": n + 1000,
        "rate_limit": None,
        "backoff_base": 30.0,
        "backoff_max": 60.0,
    }
    if spool is not None:
        options.update(spool=spool, spool_interval=interval)
    t = our_tracker(dead_url(), **options)
    track = t.track
    start = time.perf_counter()
    for _ in range(n):
        track(IDENTIFY_ID, EVENT_NAME, attributes=attributes())
    elapsed = time.perf_counter() - start
    result = {"us_per_call": elapsed / n * 1e6}
    if spool is not None:
        wait_until(lambda: t.stats().spooled >= n, 60)
        result["bytes_per_event"] = _spool_bytes(spool) / max(1, t.stats().spooled)
    t.shutdown(timeout=0)
    return result


def delivery_rate(px: ServerProcess, n: int, spool: Optional[str]) -> float:
    options: dict[str, Any] = {"rate_limit": None, "max_queue_size": n + 1000}
    if spool is not None:
        options["spool"] = spool
    t = our_tracker(px.url, **options)
    px.clear()
    start = time.perf_counter()
    for _ in range(n):
        t.track(IDENTIFY_ID, EVENT_NAME, attributes=attributes())
    assert t.flush(timeout=600)
    elapsed = time.perf_counter() - start
    t.shutdown()
    return n / elapsed


def run(n: int, reps: int) -> dict[str, Any]:
    base = tempfile.mkdtemp(prefix="px-spool-bench-")
    samples: dict[str, list[float]] = {
        "none": [],
        "default": [],
        "zero": [],
        "bytes": [],
        "rate_none": [],
        "rate_spool": [],
    }
    try:
        for rep in range(reps):  # interleaved, so a busy machine hurts every variant alike
            log(f"track() rep {rep + 1}/{reps}")
            samples["none"].append(track_cost(n, None, 0.05)["us_per_call"])
            d = tempfile.mkdtemp(dir=base)
            default = track_cost(n, d, 0.05)
            samples["default"].append(default["us_per_call"])
            samples["bytes"].append(default["bytes_per_event"])
            samples["zero"].append(
                track_cost(max(1, n // 10), tempfile.mkdtemp(dir=base), 0)["us_per_call"]
            )
        with ServerProcess("fakepx") as px:
            for rep in range(reps):
                log(f"delivery rep {rep + 1}/{reps}")
                samples["rate_none"].append(delivery_rate(px, n, None))
                samples["rate_spool"].append(delivery_rate(px, n, tempfile.mkdtemp(dir=base)))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "events": n,
        "reps": reps,
        "track_us_no_spool": med["none"],
        "track_us_spool_default": med["default"],
        "track_ratio_default": med["default"] / med["none"],
        "track_goal_default": "<= 1.5x",
        "track_us_spool_interval_0": med["zero"],
        "track_ratio_interval_0": med["zero"] / med["none"],
        "delivery_per_s_no_spool": med["rate_none"],
        "delivery_per_s_spool": med["rate_spool"],
        "delivery_ratio": med["rate_spool"] / med["rate_none"],
        "delivery_goal": ">= 0.9x",
        "disk_bytes_per_event": med["bytes"],
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spool", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.events, args.reps)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:<28} {value:.3f}" if isinstance(value, float) else f"{key:<28} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
