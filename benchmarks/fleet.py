"""The fleet-wide limit: N processes against one PX-like limit, shared limiter vs none.

    python -m benchmarks.fleet [--quick] [--json] [--sizes 2,4,8,16]

- fleets: N processes (2, 4, 8, 16), each a Tracker at ``rate_limit=200`` (what each is
  given when nobody divides the limit), against one FakePX at 200 requests/s (its token
  bucket, Retry-After: 1; burst 200, its default, and 20); the same events (``--events``
  over the fleet) with the shared Redis limiter and without. Figures from the server's
  side: share of 429s, aggregate events/s (first request to last acceptance), every event
  accepted exactly once.
- Redis cost per request: one tracker at 200/s with the limiter against FakePX (another
  process) with no limit; round trips per request, the wall time senders spent in them
  (the latency the limiter adds to a request), the client's CPU per event with and
  without the limiter, and one round trip's wall and CPU time (EVALSHA, loopback).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from benchmarks._common import ServerProcess, log, our_tracker, track_many
from tracker.testing._fleet import run_fleet
from tracker.testing._redis import RedisServer

BURSTS = (None, 20)  # FakePX's bucket beyond one request: a second's worth, a tenth's


def fleets(sizes: list[int], events: int) -> list[dict[str, Any]]:
    rows = []
    for burst in BURSTS:
        for n in sizes:
            per_process = max(1, events // n)
            for limiter in (False, True):
                log(f"burst {burst}, fleet of {n}, {'shared' if limiter else 'no'} limiter...")
                run = run_fleet(n, limiter, events=per_process, server_burst=burst, timeout=300)
                row = run.as_dict()
                row.update(per_process=per_process, burst=200 if burst is None else burst)
                rows.append(row)
    return rows


def redis_cost(events: int) -> dict[str, Any]:
    from tracker._fleet import RedisPacer  # noqa: PLC0415

    result: dict[str, Any] = {}
    with RedisServer() as redis, ServerProcess("fakepx") as px:
        for limiter in (False, True):
            options: dict[str, Any] = {"rate_limit": 200.0, "max_queue_size": events + 100}
            if limiter:
                options["limiter"] = redis.url
            t = our_tracker(px.url, **options)
            pacer = t._core.buffer._pacer
            spent = [0.0]
            if isinstance(pacer, RedisPacer):
                refill = pacer.refill

                def timed(refill: Any = refill, spent: list[float] = spent) -> None:
                    start = time.perf_counter()
                    refill()
                    spent[0] += time.perf_counter() - start

                pacer.refill = timed  # type: ignore[method-assign]
            px.clear()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            track_many(t, events)
            assert t.flush(timeout=120)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            stats = t.stats()
            key = "shared" if limiter else "local"
            result[key] = {
                "events_per_s": round(stats.delivered / wall, 1),
                "cpu_ms_per_event": round(cpu / events * 1000, 3),
                "request_ms_mean": round(
                    stats.request_duration.sum / max(1, stats.request_duration.count) * 1000, 3
                ),
            }
            if isinstance(pacer, RedisPacer):
                result[key].update(
                    round_trips_per_request=round(pacer.round_trips / stats.delivered, 3),
                    redis_ms_per_request=round(spent[0] / stats.delivered * 1000, 3),
                    sender_time_share=round(spent[0] / wall, 4),
                    fallbacks=stats.limiter_fallbacks,
                )
                walls, cpus = [], []
                for _ in range(2000):
                    c0, w0 = time.thread_time(), time.perf_counter()
                    pacer._call(0, 0.0)
                    walls.append(time.perf_counter() - w0)
                    cpus.append(time.thread_time() - c0)
                result["round_trip_us"] = {
                    "wall_median": round(statistics.median(walls) * 1e6, 1),
                    "wall_p99": round(sorted(walls)[int(len(walls) * 0.99)] * 1e6, 1),
                    "cpu_median": round(statistics.median(cpus) * 1e6, 1),
                }
            t.shutdown(timeout=5)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet")
    parser.add_argument("--quick", action="store_true", help="fewer events (a smoke run)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sizes", default="2,4,8,16")
    parser.add_argument("--events", type=int, default=None, help="over each fleet")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    events = args.events or (1600 if args.quick else 4000)
    load_before = os.getloadavg()
    began = time.monotonic()
    report = {
        "events_per_fleet": events,
        "fleets": fleets(sizes, events),
        "redis_cost": redis_cost(600 if args.quick else 2000),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(),
        "runtime_s": round(time.monotonic() - began, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_markdown(report))
    return 0


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "| FakePX burst | processes | limiter | events | requests | 429 share | events/s "
        "| delivered once |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["fleets"]:
        lines.append(
            f"| {row['burst']} | {row['processes']} | {'shared' if row['limiter'] else 'none'} "
            f"| {row['events']} "
            f"| {row['requests']} | {row['share_429'] * 100:.1f} % | {row['throughput_eps']:.0f} "
            f"| {'yes' if row['delivered_once'] else 'NO'} |"
        )
    cost = report["redis_cost"]
    lines += ["", "```", json.dumps(cost, indent=2), "```"]
    lines.append(
        f"load {report['loadavg_before']} -> {report['loadavg_after']}, "
        f"{report['cores']} cores, {report['runtime_s']} s"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
