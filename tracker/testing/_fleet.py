"""A fleet of tracker processes against one FakePX: with the shared limiter, and without.

``run_fleet(n, limiter=True)`` starts ``n`` processes (this module run as ``python -m``),
each with a Tracker at ``rate_limit`` (PX's whole limit: what each process would be given
by someone who does not know the others exist), and FakePX limiting at ``server_rate``.
They start together, each tracks ``events`` events, flushes and reports. What the server
saw decides the figures (its own timestamps): the share of 429s, the aggregate
throughput, and whether every event arrived exactly once. ``fleet_demo`` prints both
runs side by side (``tracker demo --fleet N``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any, Callable, Optional

import attrs

from tracker.testing._fakepx import FakePX
from tracker.testing._redis import RedisServer, redis_server_path

API_KEY = "fleet-demo-key"
PRODUCT_KEY = "AP-FLEET-1"
_NAMESPACE = uuid.UUID("6f1c2d3e-0000-4000-8000-00000000f1ee")


def event_id(process: int, n: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{process}/{n}"))


@attrs.frozen(kw_only=True)
class FleetRun:
    """What one fleet run came to, as the server saw it (and the processes reported)."""

    processes: int
    limiter: bool
    events: int  # tracked, over the whole fleet
    requests: int  # every request FakePX answered
    rate_limited: int  # of them answered 429
    accepted: int  # events FakePX accepted (duplicates included)
    missing: int  # tracked events FakePX never accepted
    duplicates: int  # events accepted more than once
    elapsed_s: float  # first request to last acceptance, server time
    limiter_fallbacks: int
    children: tuple[dict[str, Any], ...] = ()
    errors: tuple[str, ...] = ()  # children that failed: their exit code and stderr tail

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0

    @property
    def throughput(self) -> float:
        return (self.accepted - self.duplicates) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def delivered_once(self) -> bool:
        return self.missing == 0 and self.duplicates == 0 and not self.errors

    def as_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data.pop("children")
        data["errors"] = list(self.errors)
        data.update(
            share_429=round(self.share_429, 4),
            throughput_eps=round(self.throughput, 1),
            delivered_once=self.delivered_once,
        )
        return data


def run_fleet(
    n: int,
    limiter: bool,
    *,
    events: int = 150,
    rate_limit: float = 200.0,
    server_rate: float = 200.0,
    server_burst: Optional[int] = None,
    redis_url: Optional[str] = None,
    px: Optional[FakePX] = None,
    timeout: float = 60.0,
    env: Optional[dict[str, str]] = None,
) -> FleetRun:
    """Run ``n`` processes of ``events`` events each; see the module docstring. A given
    ``px`` is used as is (and cleared first); a given ``redis_url`` too, else a
    ``redis-server`` is started for the run when ``limiter`` is set. ``server_burst`` is
    FakePX's bucket beyond one request (None: one second's worth)."""
    own_px = px is None
    if px is None:
        server = FakePX(api_key=API_KEY, rate_limit=server_rate, burst=server_burst)
    else:
        server = px
    redis: Optional[RedisServer] = None
    try:
        if own_px:
            server.start()
        server.clear()
        url = redis_url
        if limiter and url is None:
            redis = RedisServer().start()
            url = redis.url
        children = _run_children(n, events, rate_limit, server.url, url, timeout, env)
    finally:
        if redis is not None:
            redis.stop()
        if own_px:
            server.stop()
    return _figures(n, limiter, events, server, children)


def _run_children(
    n: int,
    events: int,
    rate_limit: float,
    px_url: str,
    redis_url: Optional[str],
    timeout: float,
    env: Optional[dict[str, str]],
) -> list[tuple[int, str, str]]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PX_")}
    child_env.update(env or {})
    processes = []
    for index in range(n):
        spec = {
            "index": index,
            "events": events,
            "rate_limit": rate_limit,
            "base_url": px_url,
            "limiter": redis_url,
            "timeout": timeout,
        }
        processes.append(
            subprocess.Popen(  # noqa: S603 - this module, run by this interpreter
                [sys.executable, "-m", "tracker.testing._fleet", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_env,
            )
        )
    try:
        for process in processes:  # each says "ready" once its Tracker is built
            assert process.stdout is not None
            process.stdout.readline()
        for process in processes:  # then all start at once
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            process.stdin.flush()
        results = []
        deadline = time.monotonic() + timeout + 30
        for process in processes:
            out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((process.returncode, out.decode(), err.decode()))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _figures(
    n: int, limiter: bool, events: int, px: FakePX, children: list[tuple[int, str, str]]
) -> FleetRun:
    requests = px.requests
    accepted = px.event_ids()
    seen = set(accepted)
    expected = {event_id(p, k) for p in range(n) for k in range(events)}
    reports: list[dict[str, Any]] = []
    errors: list[str] = []
    for index, (code, out, err) in enumerate(children):
        lines = out.strip().splitlines()
        try:
            report = json.loads(lines[-1]) if code == 0 and lines else None
        except ValueError:
            report = None
        if report is None:
            errors.append(f"process {index}: exit code {code}: {err.strip()[-500:]}")
        else:
            reports.append(report)
    times = [r.arrived_at for r in requests]
    done = [r.answered_at for r in requests if r.status is not None and 200 <= r.status < 300]
    elapsed = (max(done) - min(times)) if done and times else 0.0
    return FleetRun(
        processes=n,
        limiter=limiter,
        events=n * events,
        requests=len(requests),
        rate_limited=sum(1 for r in requests if r.status == 429),
        accepted=len(accepted),
        missing=len(expected - seen),
        duplicates=len(accepted) - len(seen),
        elapsed_s=round(elapsed, 3),
        limiter_fallbacks=sum(r.get("limiter_fallbacks") or 0 for r in reports),
        children=tuple(reports),
        errors=tuple(errors),
    )


DEMO_BURST = 20  # FakePX's bucket beyond one request: a tenth of a second at 200/s


def fleet_demo(n: int, json_output: bool = False, events: int = 150) -> int:
    """Both runs of ``n`` processes, side by side. 0: nothing lost in either run; 1: an
    event was lost or duplicated; 2: the demo could not run (no redis-server...)."""
    if redis_server_path() is None:
        print(
            "tracker demo --fleet needs redis-server (Debian: apt install redis-server)",
            file=sys.stderr,
        )
        return 2
    try:
        import redis  # noqa: F401, PLC0415
    except ImportError:
        print("tracker demo --fleet needs: pip install 'px-tracker[redis]'", file=sys.stderr)
        return 2
    try:
        runs = [
            run_fleet(n, False, events=events, server_burst=DEMO_BURST),
            run_fleet(n, True, events=events, server_burst=DEMO_BURST),
        ]
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"tracker demo --fleet: {exc}", file=sys.stderr)
        return 2
    if json_output:
        print(json.dumps({"no_limiter": runs[0].as_dict(), "shared": runs[1].as_dict()}, indent=2))
    else:
        print(_table(n, events, runs))
    if any(run.errors for run in runs):
        return 2
    return 0 if all(run.delivered_once for run in runs) else 1


def _table(n: int, events: int, runs: list[FleetRun]) -> str:
    plain, shared = runs
    rows: list[tuple[str, Callable[[FleetRun], str]]] = [
        ("requests", lambda r: f"{r.requests}"),
        ("answered 429", lambda r: f"{r.rate_limited} ({r.share_429 * 100:.1f}%)"),
        ("throughput", lambda r: f"{r.throughput:.0f} events/s"),
        ("elapsed", lambda r: f"{r.elapsed_s:.1f} s"),
        ("delivered once", lambda r: "yes" if r.delivered_once else f"NO ({r.missing} missing)"),
        ("limiter fallbacks", lambda r: f"{r.limiter_fallbacks}" if r.limiter else "-"),
    ]
    lines = [
        f"tracker demo --fleet {n}: {n} processes x {events} events, each rate_limit=200,",
        f"against one FakePX limiting at 200 requests/s (token bucket, burst {DEMO_BURST})",
        "",
        f"  {'':<18} {'pacing per process':>20} {'shared limiter':>20}",
    ]
    lines += [f"  {name:<18} {show(plain):>20} {show(shared):>20}" for name, show in rows]
    return "\n".join(lines)


def _child(spec: dict[str, Any]) -> int:
    """One process of the fleet: build, say ready, wait for go, track, flush, report."""
    from tracker import Tracker  # noqa: PLC0415

    options: dict[str, Any] = {}
    if spec["limiter"]:
        options["limiter"] = spec["limiter"]
    tracker = Tracker(
        API_KEY,
        product_key=PRODUCT_KEY,
        base_url=spec["base_url"],
        rate_limit=spec["rate_limit"],
        overflow="block",
        flush_at_exit=False,
        **options,
    )
    print("ready", flush=True)
    sys.stdin.readline()
    index = spec["index"]
    begin = time.monotonic()
    for k in range(spec["events"]):
        tracker.track(
            f"user-{index}",
            "Fleet Event",
            attributes={"p": index, "n": k},
            event_id=event_id(index, k),
        )
    flushed = tracker.flush(timeout=spec["timeout"])
    elapsed = time.monotonic() - begin
    stats = tracker.stats()
    tracker.shutdown(timeout=1)
    report = {
        "index": index,
        "flushed": flushed,
        "delivered": stats.delivered,
        "rate_limited": stats.rate_limited,
        "limiter_fallbacks": stats.limiter_fallbacks,
        "elapsed_s": round(elapsed, 3),
    }
    print(json.dumps(report), flush=True)
    return 0 if flushed else 1


if __name__ == "__main__":
    sys.exit(_child(json.loads(sys.argv[1])))
