"""Why nginx burst=0 refuses requests we sent evenly: our departures beside nginx's stamps.

    python -m benchmarks.burst0_jitter [--latency S] [--events N] [--runs R]
        [--retry-after 1|none] [--rate-limit R] [--nice N] [--spin]

One cell of the limiters case (nginx ``limit_req`` at 200 r/s with burst 0, before a FakePX
process answering after ``--latency``), ours with default settings (or ``--rate-limit``).
Each request's departure (its last byte written, as the pacer hears of it) is recorded on
the wall clock beside nginx's access log (when it began reading each request, in whole
ms). For each run: the rate at the server, the 429s, how busy the 2 CPUs were; for each
429, the requests before it as nginx stamped them and as they left here, and nginx's lag
(its stamp less our departure). ``--nice`` sets nginx's scheduling priority and ``--spin``
keeps both CPUs awake with idle-class spinners, to tell a limiter starved of CPU from one
delayed otherwise. A diagnostic, not a goal: see RESULTS.md (stop 24).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional
from unittest import mock

from benchmarks._common import ServerProcess, Settings, our_tracker, track_many
from benchmarks.cases.limiters import LIMIT, nginx_harness
from tracker import _pacing

SPIN = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True: pass"


def _cpu() -> tuple[int, int]:
    """(all, idle) jiffies of the machine, from /proc/stat (zeros elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return 0, 0
    return sum(fields), fields[3] + fields[4]


def _run(args: argparse.Namespace, nginx_class: Any, binary: str) -> None:
    departures: list[float] = []  # wall clock, when each request's last byte was written
    offset = time.time() - time.monotonic()
    written = _pacing.LocalPacer.written

    def record(pacer: _pacing.LocalPacer, sent_at: float, at: float) -> None:
        departures.append(at + offset)
        written(pacer, sent_at, at)

    options = {} if args.rate_limit is None else {"rate_limit": args.rate_limit}
    with ServerProcess("fakepx", latency=args.latency) as upstream:
        nginx = nginx_class(
            binary,
            Path(tempfile.mkdtemp()),
            rate=LIMIT,
            burst=0,
            nodelay=True,
            retry_after=args.retry_after,
            upstream_port=upstream.port,
            upstream_keepalive=128,
        )
        nginx.start()
        try:
            if args.nice is not None:  # one process: the harness runs no master
                os.setpriority(os.PRIO_PROCESS, nginx.process.pid, args.nice)
            before = _cpu()
            with mock.patch.object(_pacing.LocalPacer, "written", record):
                tracker = our_tracker(nginx.url, **options)
                started = time.monotonic()
                track_many(tracker, args.events)
                tracker.flush(timeout=args.events / 20 + 60)
                took = time.monotonic() - started
            after = _cpu()
            stats = tracker.stats()
            tracker.shutdown(timeout=0)
            records = sorted(nginx.records(at_least=len(departures)), key=lambda r: r.arrived)
        finally:
            nginx.stop()
    accepted = [r.arrived for r in records if r.status != 429]
    sustained = (len(accepted) - 1) / (accepted[-1] - accepted[0])
    busy = 1 - (after[1] - before[1]) / max(1, after[0] - before[0])
    print(
        f"latency {args.latency * 1000:.0f} ms: {sustained:.0f} events/s at the server, "
        f"{stats.rate_limited} 429s, send_rate {stats.send_rate or 0:.0f} at the end, "
        f"{args.events / took:.0f} events/s wall clock, CPUs {busy:.0%} busy"
    )
    departures.sort()
    if len(departures) != len(records):
        print(f"  {len(departures)} departures, {len(records)} log lines: not matched")
        return
    lags = sorted((r.arrived - d) * 1000 for r, d in zip(records, departures))
    print(
        f"  nginx's lag (ms, its stamp less our departure): median {lags[len(lags) // 2]:.1f}, "
        f"p99 {lags[len(lags) * 99 // 100]:.1f}, most {lags[-1]:.1f}"
    )
    close = [
        i
        for i in range(1, len(departures))
        if departures[i] - departures[i - 1] < 1 / LIMIT
        and records[i - 1].status != 429
        and records[i].arrived - records[0].arrived > 1.0
    ]
    print(
        f"  after the first second, {len(close)} requests left less than 5 ms after an "
        f"accepted one; {sum(records[i].status == 429 for i in close)} of them refused"
    )
    for i, refused in enumerate(records):
        if refused.status != 429:
            continue
        rows = range(max(1, i - 3), i + 1)
        print(f"  429 at {refused.arrived - records[0].arrived:.3f} s; the requests up to it:")
        for j in rows:
            gap_here = (departures[j] - departures[j - 1]) * 1000
            gap_there = (records[j].arrived - records[j - 1].arrived) * 1000
            lag = (records[j].arrived - departures[j]) * 1000
            print(
                f"    {records[j].status}: left {gap_here:5.1f} ms after the one before, "
                f"stamped {gap_there:3.0f} ms after it, lag {lag:4.1f} ms"
            )


def _retry_after(value: str) -> Optional[int]:
    return None if value == "none" else int(value)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.burst0_jitter")
    parser.add_argument("--latency", type=float, default=0.15, help="seconds (default 0.15)")
    parser.add_argument("--events", type=int, default=Settings.limiter_events)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--retry-after", type=_retry_after, default=1, help="1 or none")
    parser.add_argument("--rate-limit", type=float, default=None)
    parser.add_argument("--nice", type=int, default=None, help="nginx's priority (-20..19)")
    parser.add_argument("--spin", action="store_true", help="idle-class spinners on 2 CPUs")
    args = parser.parse_args(argv)
    try:
        nginx_class, binary = nginx_harness()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    spinners = [
        subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(2 if args.spin else 0)
    ]
    try:
        for _ in range(args.runs):
            _run(args, nginx_class, binary)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
