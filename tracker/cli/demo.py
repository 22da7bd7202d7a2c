"""``tracker demo``: the whole pipeline against a local FakePX with faults, and a report."""

from __future__ import annotations

import argparse
import json
import math
import random
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from tracker._event import CustomEvent
from tracker._tracker import Tracker
from tracker.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    Command,
    add_fault_options,
    add_output_options,
    fault_options,
    number,
    positive_int,
    progress_bar,
    reasons,
)

if TYPE_CHECKING:
    from tracker.testing import FakePX

_KEY = "demo-api-key"
_PRODUCT = "AP-DEMO00000-1"
_EVENTS = ("Report Exported", "Dashboard Viewed", "Invite Sent", "Search", "Signup")


def add_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--events", type=positive_int, default=2000, metavar="N", help="default: %(default)s"
    )
    demo.add_argument(
        "--threads",
        type=positive_int,
        default=4,
        metavar="N",
        help="producer threads (default: %(default)s)",
    )
    add_fault_options(
        demo, fail_rate=0.05, rate_limit=200.0, latency=0.02, jitter=0.03, drop_rate=0.01
    )
    demo.add_argument(
        "--max-retries",
        type=int,
        default=None,
        metavar="N",
        help="the tracker's max_retries (default: the library's)",
    )
    demo.add_argument(
        "--timeout",
        type=number,
        default=120.0,
        metavar="SECONDS",
        help="give up waiting for delivery after this long (default: %(default)s)",
    )
    demo.add_argument(
        "--fleet",
        type=positive_int,
        default=None,
        metavar="N",
        help="run N processes (each rate_limit=200) against one FakePX at PX's 200 req/s, "
        "without and then with the shared Redis limiter (needs redis-server and "
        "px-tracker[redis]); --events is then the fleet's total",
    )
    add_output_options(demo, "report")


def run(args: argparse.Namespace) -> int:
    # The testing kit is imported by the commands that run it, never at import of the CLI.
    if args.fleet is not None:
        from tracker.testing._fleet import fleet_demo  # noqa: PLC0415

        return fleet_demo(args.fleet, args.json, events=max(1, args.events // args.fleet))
    from tracker.testing import FakePX  # noqa: PLC0415

    px = FakePX(api_key=_KEY, **fault_options(args))
    with px:
        report = _Run(args, px).run()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(args, report))
    return EXIT_FAILED if report["lost"] else EXIT_OK


class _Run:
    """One demo: producer threads track into a Tracker that sends to ``px``."""

    def __init__(self, args: argparse.Namespace, px: FakePX) -> None:
        self.args = args
        self.px = px
        self.lock = threading.Lock()
        self.started: dict[str, float] = {}  # event id -> when track() was called
        self.latencies: list[float] = []
        self.stop = threading.Event()
        options: dict[str, Any] = {}
        if args.max_retries is not None:
            options["max_retries"] = args.max_retries
        # Library defaults otherwise (pacing 200/s, backoff, 429 pauses): the point of the
        # demo is to show them coping. "block" because the producers here are a batch
        # that outpaces PX, and a batch should wait for room rather than drop events.
        self.client = Tracker(
            _KEY,
            product_key=_PRODUCT,
            base_url=px.url,
            overflow="block",
            on_success=self._on_success,
            flush_at_exit=False,
            **options,
        )

    def _on_success(self, event: CustomEvent) -> None:
        now = time.monotonic()
        with self.lock:
            self.latencies.append(now - self.started[event.event_id])

    def _produce(self, index: int, count: int) -> None:
        seed = self.args.seed
        rng = random.Random(None if seed is None else seed * 1009 + index)
        for n in range(count):
            if self.stop.is_set():
                return
            event_id = str(uuid.uuid4())
            with self.lock:
                self.started[event_id] = time.monotonic()
            self.client.track(
                f"user-{rng.randrange(100)}",
                rng.choice(_EVENTS),
                attributes={"thread": index, "n": n, "plan": rng.choice(("free", "pro"))},
                event_id=event_id,
            )

    def run(self) -> dict[str, Any]:
        """Produce, wait for delivery (or the timeout), shut down; the report."""
        args, client = self.args, self.client
        shares = [args.events // args.threads] * args.threads
        for i in range(args.events % args.threads):
            shares[i] += 1
        producers = [
            threading.Thread(
                target=self._produce, args=(i, n), name=f"demo-producer-{i}", daemon=True
            )
            for i, n in enumerate(shares)
            if n
        ]
        bar = progress_bar(args.quiet, total=args.events, unit="ev", desc="delivered")
        begin = time.monotonic()
        deadline = begin + args.timeout
        timed_out = False
        try:
            for thread in producers:
                thread.start()
            while True:
                producing = any(t.is_alive() for t in producers)
                if producing:
                    time.sleep(0.1)
                    done = False
                else:
                    done = client.flush(timeout=0.1)
                now_stats = client.stats()
                settled = now_stats.delivered + now_stats.failed + now_stats.dropped
                postfix = {"retries": now_stats.retries, "429s": now_stats.rate_limited}
                bar.set_postfix(postfix, refresh=False)
                bar.update(settled - bar.n)
                if done:
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
            elapsed = time.monotonic() - begin
        finally:
            self.stop.set()
            bar.close()
            client.shutdown(timeout=0)
            for thread in producers:
                thread.join(1)
        return self._report(len(producers), elapsed, timed_out)

    def _report(self, threads: int, elapsed: float, timed_out: bool) -> dict[str, Any]:
        args, px = self.args, self.px
        stats = self.client.stats()
        accepted = px.event_ids()
        responses: dict[str, int] = {}
        for request in px.requests:
            key = "dropped" if request.status is None else str(request.status)
            responses[key] = responses.get(key, 0) + 1
        config = self.client.config
        accepted_set = set(accepted)
        missing = sum(1 for event_id in self.started if event_id not in accepted_set)
        lats = sorted(self.latencies)
        report: dict[str, Any] = {
            "events": args.events,
            "threads": threads,
            "tracked": stats.tracked,
            "delivered": stats.delivered,
            "retried": stats.retries,
            "rate_limited": stats.rate_limited,
            "failed": stats.failed,
            "dropped": stats.dropped,
            "failed_by_reason": {k: v for k, v in stats.failed_by_reason.items() if v},
            "dropped_by_reason": {k: v for k, v in stats.dropped_by_reason.items() if v},
            "elapsed_s": round(elapsed, 3),
            "throughput_eps": round(stats.delivered / elapsed, 1) if elapsed > 0 else None,
            "latency_ms": {
                "p50": _ms(_percentile(lats, 50)),
                "p95": _ms(_percentile(lats, 95)),
                "p99": _ms(_percentile(lats, 99)),
                "max": _ms(lats[-1] if lats else None),
            },
            "server": {
                "requests": sum(responses.values()),
                "accepted": len(accepted),
                "duplicates": len(accepted) - len(accepted_set),
                "responses": dict(sorted(responses.items())),
            },
            "client": {"workers": config.workers, "rate_limit": config.rate_limit},
            "missing": missing,
            "timed_out": timed_out,
        }
        report["lost"] = (
            missing > 0
            or stats.failed > 0
            or stats.dropped > 0
            or stats.tracked != args.events
            or timed_out
        )
        return report


def _percentile(sorted_values: Sequence[float], q: float) -> Optional[float]:
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 1)


def _text(args: argparse.Namespace, r: dict[str, Any]) -> str:
    def pct(value: float) -> str:
        return f"{value * 100:g}%"

    lat = r["latency_ms"]
    server = r["server"]
    limit = f"{args.rate_limit:g} req/s" if args.rate_limit else "no"
    low, high = args.latency * 1000, (args.latency + args.jitter) * 1000
    pacing = r["client"]["rate_limit"]
    lines = [
        f"tracker demo: {r['events']} events from {r['threads']} threads into a local FakePX",
        f"  server: {pct(args.fail_rate)} 500s, {pct(args.drop_rate)} dropped connections, "
        f"{limit} rate limit, {low:g}-{high:g} ms latency",
        f"  client: {r['client']['workers']} workers, pacing "
        + ("off" if pacing is None else f"{pacing:g} req/s"),
        "",
        f"  tracked      {r['tracked']:>8}",
        f"  delivered    {r['delivered']:>8}",
        f"  retried      {r['retried']:>8}   (after 500s, dropped connections and 429s)",
        f"  429s seen    {r['rate_limited']:>8}   (every sender paused for Retry-After)",
        f"  failed       {r['failed']:>8}" + reasons(r["failed_by_reason"]),
        f"  dropped      {r['dropped']:>8}" + reasons(r["dropped_by_reason"]),
        f"  throughput   {r['throughput_eps'] or 0:>8.1f} events/s over {r['elapsed_s']:.2f} s",
    ]
    if lat["p50"] is not None:
        lines.append(
            f"  latency      p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, "
            f"p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms (track() to delivered)"
        )
    answers = ", ".join(f"{n} x {status}" for status, n in server["responses"].items())
    lines.append(f"  server saw   {server['requests']:>8} requests: {answers or 'none'}")
    lines.append("")
    if r["timed_out"]:
        lines.append(f"result: gave up waiting after {args.timeout:g} s")
    if r["lost"]:
        lines.append(
            f"result: LOST EVENTS: {r['missing']} of {r['events']} never reached FakePX "
            f"({r['failed']} failed, {r['dropped']} dropped)"
        )
    else:
        duplicates = server["duplicates"]
        extra = f" ({duplicates} delivered twice)" if duplicates else ""
        lines.append(f"result: nothing lost: every tracked event reached FakePX{extra}")
    return "\n".join(lines)


COMMAND = Command(
    name="demo",
    help="run the whole pipeline against a local FakePX with faults, and report",
    description=(
        "Track events from several threads into a local FakePX that fails, drops "
        "connections, answers slowly and rate-limits, then report what was delivered. "
        "Exit code 0 only when nothing was lost."
    ),
    add_arguments=add_arguments,
    run=run,
)
