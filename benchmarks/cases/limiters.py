"""The limiters case: ours with default settings against limiters nobody here tuned it for
(FakePX's token bucket; nginx ``limit_req`` with burst 0, 20 nodelay, 50 delaying; each
with and without Retry-After) at round trips of 1 to 300 ms: events/s, 429 share and
the sender threads it took."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from benchmarks._common import (
    Goal,
    Row,
    ServerProcess,
    Settings,
    log,
    median,
    our_tracker,
    track_many,
)

LIMIT = 200
ROUND_TRIPS_MS = (1, 10, 50, 150, 300)
THREAD_PREFIX = "px-tracker-"  # the names of ours' sender threads
SAMPLE_EVERY = 0.01


@dataclass(frozen=True)
class Kind:
    """One limiter: FakePX's token bucket (``burst`` None) or nginx limit_req."""

    label: str
    nginx: bool
    retry_after: Optional[int]
    burst: int = 0
    nodelay: bool = False

    @property
    def rate_goal(self) -> float:
        # Requests spaced evenly at 5 ms leave no room for a client's timing jitter.
        return 0.75 if self.nginx and self.burst == 0 else 0.9

    @property
    def share_goal(self) -> float:
        return 2.0 if self.nginx and self.burst == 0 else 1.0


def _kinds() -> list[Kind]:
    kinds = []
    for retry_after in (1, None):
        said = "Retry-After: 1" if retry_after else "no Retry-After"
        kinds.append(Kind(f"FakePX token bucket, {said}", False, retry_after))
        kinds.append(Kind(f"nginx burst=0, {said}", True, retry_after))
        kinds.append(Kind(f"nginx burst=20 nodelay, {said}", True, retry_after, 20, True))
        kinds.append(Kind(f"nginx burst=50 delaying, {said}", True, retry_after, 50, False))
    return kinds


class _ThreadPeak:
    """The most sender threads alive at once, sampled every 10 ms on a thread of its own."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-thread-peak", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            alive = sum(t.name.startswith(THREAD_PREFIX) for t in threading.enumerate())
            self.peak = max(self.peak, alive)
            self._stop.wait(SAMPLE_EVERY)

    def __enter__(self) -> _ThreadPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _deliver(url: str, n: int) -> dict[str, float]:
    """Ours, default settings: ``n`` events tracked at once, then flush()."""
    tracker = our_tracker(url)
    try:
        with _ThreadPeak() as threads:
            started = time.perf_counter()
            track_many(tracker, n)
            flushed = tracker.flush(timeout=n / LIMIT * 10 + 60)
            elapsed = time.perf_counter() - started
        stats = tracker.stats()
    finally:
        tracker.shutdown(timeout=0)
    if not flushed:
        log(f"  [limiters] flush() timed out with {stats.pending} pending")
    return {
        "elapsed_s": elapsed,
        "peak_threads": float(threads.peak),
        "client_429": float(stats.rate_limited),
        "send_rate": float(stats.send_rate or 0.0),
        "pending": float(stats.pending),
    }


def _cell_fakepx(px: ServerProcess, n: int) -> dict[str, float]:
    time.sleep(1.1)  # the bucket refills after the previous cell
    px.clear()
    result = _deliver(px.url, n)
    server = px.stats()
    px.clear()
    result["delivered"] = float(server["unique_events"])
    result["accepted_span_s"] = float(server["accepted_span_s"])
    result["requests"] = float(server["requests"])
    result["answered_429"] = float(server["statuses"].get("429", 0))
    return result


def _cell_nginx(
    nginx_class: Any, binary: str, root: Path, kind: Kind, upstream: ServerProcess, n: int
) -> dict[str, float]:
    upstream.clear()
    server = nginx_class(
        binary,
        Path(tempfile.mkdtemp(dir=root)),
        rate=LIMIT,
        burst=kind.burst,
        nodelay=kind.nodelay,
        retry_after=kind.retry_after,
        upstream_port=upstream.port,
        upstream_keepalive=128,
    )
    server.start()
    try:
        result = _deliver(server.url, n)
        passed = upstream.stats()
        # nginx logs after answering: wait for the lines of every request it answered.
        expected = int(passed["requests"] + result["client_429"])
        records = server.records(at_least=expected, timeout=5)
    finally:
        server.stop()
    upstream.clear()
    result["delivered"] = float(passed["unique_events"])
    result["accepted_span_s"] = float(passed["accepted_span_s"])
    result["requests"] = float(len(records))
    result["answered_429"] = float(sum(r.status == 429 for r in records))
    return result


def nginx_harness() -> tuple[Any, str]:
    try:
        from tests._nginx import INSTALL_HINT, Nginx, find_nginx  # noqa: PLC0415
    except ImportError as exc:
        raise RuntimeError(f"limiters needs tests/_nginx.py and pytest ('.[dev]'): {exc}") from exc
    binary = find_nginx()
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    return Nginx, binary


def _figures(result: dict[str, float], n: int) -> dict[str, float]:
    requests = result["requests"]
    return {
        **result,
        "events_per_s": result["delivered"] / result["elapsed_s"],
        # The rate at the server between the first and the last accepted arrival: the
        # pacing itself, without the first answer's wait and the last one's round trip.
        "sustained_per_s": (
            (result["delivered"] - 1) / result["accepted_span_s"]
            if result["accepted_span_s"] > 0
            else 0.0
        ),
        "share_429_pct": result["answered_429"] / requests * 100 if requests else 0.0,
        "all_delivered": float(result["delivered"] == n),
    }


def _run_cells(
    settings: Settings, kinds: list[Kind]
) -> dict[tuple[str, int], list[dict[str, float]]]:
    nginx_class, binary = nginx_harness()
    n = settings.limiter_events
    cells: dict[tuple[str, int], list[dict[str, float]]] = {}
    root = Path(tempfile.mkdtemp(prefix="px-bench-nginx-"))
    try:
        for rep in range(settings.limiter_reps):
            for rtt in ROUND_TRIPS_MS:
                latency = rtt / 1000
                with ExitStack() as stack:
                    upstream = stack.enter_context(ServerProcess("fakepx", latency=latency))
                    buckets = {
                        retry_after: stack.enter_context(
                            ServerProcess(
                                "fakepx",
                                rate_limit=LIMIT,
                                latency=latency,
                                retry_after=None if retry_after is None else str(retry_after),
                            )
                        )
                        for retry_after in (1, None)
                    }
                    shift = rep % len(kinds)  # the order rotates with each repetition
                    for kind in kinds[shift:] + kinds[:shift]:
                        started = time.perf_counter()
                        if kind.nginx:
                            raw = _cell_nginx(nginx_class, binary, root, kind, upstream, n)
                        else:
                            raw = _cell_fakepx(buckets[kind.retry_after], n)
                        result = _figures(raw, n)
                        cells.setdefault((kind.label, rtt), []).append(result)
                        log(
                            f"  [limiters] rep {rep + 1}/{settings.limiter_reps} {kind.label}, "
                            f"{rtt} ms: {result['events_per_s']:.0f} events/s, "
                            f"{result['share_429_pct']:.2f} % 429, "
                            f"{result['peak_threads']:.0f} threads "
                            f"({time.perf_counter() - started:.1f}s)"
                        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return cells


def limiters(settings: Settings) -> list[Row]:
    kinds = _kinds()
    n = settings.limiter_events
    cells = _run_cells(settings, kinds)

    def med(kind: Kind, rtt: int, key: str) -> float:
        return median([result[key] for result in cells[(kind.label, rtt)]])

    # The goal is judged on the rate at the server (first to last accepted arrival: the
    # pacing, its 429 pauses and its ramp included). The wall-clock rate also counts the
    # wait for the first answer and the last one's round trip, which no pacing can spare:
    # at 300 ms, 1,000 events at exactly 200/s take 5 s + 0.6 s (0.89x), 300 take 2.1 s
    # (0.71x).
    table_rows = []
    for kind in kinds:
        for rtt in ROUND_TRIPS_MS:
            rate, share = med(kind, rtt, "events_per_s"), med(kind, rtt, "share_429_pct")
            sustained = med(kind, rtt, "sustained_per_s")
            met = sustained >= kind.rate_goal * LIMIT and share < kind.share_goal
            table_rows.append(
                [
                    kind.label,
                    f"{rtt} ms",
                    f"{rate:,.0f}",
                    f"{rate / LIMIT:.2f}x",
                    f"{sustained:,.0f}",
                    f"{sustained / LIMIT:.2f}x",
                    f"{share:.2f} %",
                    f"{med(kind, rtt, 'peak_threads'):.0f}",
                    f"{med(kind, rtt, 'send_rate'):.0f}",
                    f"{min(r['delivered'] for r in cells[(kind.label, rtt)]):,.0f}",
                    "yes" if met else "**NO**",
                ]
            )
    table = {
        "title": f"limiters: {n:,} events per cell, ours with default settings, limit {LIMIT}/s",
        "header": [
            "limiter",
            "round trip",
            "events/s",
            "x limit",
            "sustained at the server",
            "x limit (goal)",
            "429 share",
            "peak threads",
            "send_rate at end",
            "delivered (worst rep)",
            "goal met",
        ],
        "rows": table_rows,
    }
    # The cells and their table go with the first row only (once in the JSON document).
    extra: dict[str, Any] = {"events_per_cell": n, "reps": settings.limiter_reps}
    first: dict[str, Any] = {
        **extra,
        "cells": {f"{label} @ {rtt} ms": runs for (label, rtt), runs in cells.items()},
        "table": table,
    }
    rows: list[Row] = []
    for kind in kinds:
        rates = [med(kind, rtt, "sustained_per_s") for rtt in ROUND_TRIPS_MS]
        shares = [med(kind, rtt, "share_429_pct") for rtt in ROUND_TRIPS_MS]
        worst_rtt = ROUND_TRIPS_MS[rates.index(min(rates))]
        rows.append(
            Row(
                "limiters",
                f"{kind.label}: events/s at the server, worst round trip ({worst_rtt} ms)",
                "events/s",
                [min(rates)],
                baseline=f"limit {LIMIT}/s (constant)",
                baseline_value=float(LIMIT),
                goal=Goal(f">= {kind.rate_goal:g}x the limit", "ratio", ">=", kind.rate_goal),
                digits=0,
                extra=extra if rows else first,
                explain=(
                    f"{n:,} events tracked at once then flush(), ours with default settings, "
                    f"{settings.limiter_reps} rep(s) per cell; unique events that reached "
                    "FakePX, minus one, / (its first to its last accepted arrival), the "
                    f"slowest of the round trips {', '.join(map(str, ROUND_TRIPS_MS))} ms "
                    "(FakePX's latency; behind nginx, nginx proxies to FakePX with that "
                    "latency and answers its own 429s at once). Every cell, with its "
                    "wall-clock rate (first track() to flush() return, the first answer's "
                    "wait and the last round trip included), in the table below the main one"
                ),
            )
        )
        rows.append(
            Row(
                "limiters",
                f"{kind.label}: 429 share, worst round trip "
                f"({ROUND_TRIPS_MS[shares.index(max(shares))]} ms)",
                "%",
                [max(shares)],
                goal=Goal(f"< {kind.share_goal:g}%", "value", "<", kind.share_goal),
                explain=(
                    "429 answers / all answers, from the limiter's own record (FakePX's "
                    "statuses, nginx's access log)"
                ),
                extra=extra,
            )
        )
    return rows
