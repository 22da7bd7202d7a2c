"""The host_app case: what tracking costs a web app. A WSGI app under gunicorn (one sync
worker, ~1 ms of CPU and one event per request) under a closed-loop load generator in
another process; requests/s and p99 with no tracking, ours, Segment and PostHog."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Optional

from benchmarks._common import (
    HERE,
    Goal,
    Row,
    ServerProcess,
    Settings,
    column,
    interleave,
    median,
)
from benchmarks.cases._shared import peer_row, posthog_sdk, segment_sdk, slug

START_TIMEOUT = 30.0


class Gunicorn:
    """gunicorn serving benchmarks._host_app with one sync worker, on a socket bound here
    and handed over as ``fd://`` (no free-port race); the SDK is chosen by env var."""

    def __init__(self, tracking: str, sink_url: str) -> None:
        self.tracking = tracking
        self.sink_url = sink_url
        self.port = 0
        self._proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Gunicorn:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        fd = listener.fileno()
        os.set_inheritable(fd, True)
        env = dict(os.environ, PX_BENCH_TRACKING=self.tracking, PX_BENCH_SINK=self.sink_url)
        # PX_* options of the environment would change ours' defaults: none of them here.
        env = {k: v for k, v in env.items() if not k.startswith("PX_") or k.startswith("PX_BENCH")}
        args = [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "sync"]
        args += ["--bind", f"fd://{fd}", "--graceful-timeout", "2", "--timeout", "120"]
        args += ["--log-level", "warning", "benchmarks._host_app:app"]
        try:
            self._proc = subprocess.Popen(
                args, cwd=HERE.parent, env=env, pass_fds=(fd,), stdin=subprocess.DEVNULL
            )
        finally:
            listener.close()  # gunicorn holds its own copy
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn ({self.tracking}) exited with {self._proc.returncode}"
                )
            try:
                self.get("/health")
                return self
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"gunicorn ({self.tracking}) did not answer") from None
                time.sleep(0.05)

    def get(self, path: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise http.client.HTTPException(f"{path}: {response.status}")
            answer: dict[str, Any] = json.loads(body)
            return answer
        finally:
            conn.close()

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # graceful: the worker gets 2 s, then is killed
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve(tracking: str, sink: ServerProcess, settings: Settings) -> dict[str, float]:
    sink.clear()
    with Gunicorn(tracking, sink.url) as app:
        command = [sys.executable, "-m", "benchmarks._load", app.url + "/track"]
        command += ["--clients", str(settings.host_clients)]
        command += ["--duration", str(settings.host_seconds), "--warmup", str(settings.host_warmup)]
        # The app's /stats as the measured window opens and closes: its CPU and what the
        # SDK delivered within it, after the warm-up (ours paces one request at a time
        # for its first second of sending, more slowly than its sustained 200/s).
        command += ["--stats", "/stats"]
        load = subprocess.run(
            command,
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=settings.host_seconds + settings.host_warmup + 120,
            check=True,
        )
    report = json.loads(load.stdout)
    before, after = report["stats_start"], report["stats_end"]
    sink_requests = sink.stats()["requests"]
    served = max(1, report["requests"])
    result = {
        "requests_per_s": report["requests_per_s"],
        "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"],
        "errors": float(report["errors"]),
        "worker_cpu_ms_per_request": (after["cpu_s"] - before["cpu_s"]) / served * 1000,
        "worker_threads": float(after["threads"]),
        "sink_requests": float(sink_requests),
    }
    if tracking == "ours":
        result["tracked"] = float(after["tracked"])
        result["delivered"] = float(after["delivered"])
        result["dropped"] = float(after["dropped"])
        # What ours delivered within the measured window: its sustained rate, the cost
        # of which the app's figures show.
        result["delivered_per_s"] = (after["delivered"] - before["delivered"]) / (
            after["read_at"] - before["read_at"]
        )
    return result


VARIANTS = {
    "none": "no tracking",
    "ours": "ours",
    "segment": "Segment",
    "posthog": "PostHog",
    "bare": "bare sender",
}


def host_app(settings: Settings) -> list[Row]:
    if importlib.util.find_spec("gunicorn") is None:
        raise RuntimeError("host_app needs gunicorn: pip install -e '.[dev,bench]'")
    available = {"segment": segment_sdk() is not None, "posthog": posthog_sdk() is not None}
    names = [name for name in VARIANTS if available.get(name, True)]
    with ServerProcess("sink") as sink:
        results = interleave(
            "host_app",
            settings.reps,
            {VARIANTS[name]: (lambda name=name: _serve(name, sink, settings)) for name in names},
        )

    def samples(variant: str, key: str) -> Optional[list[float]]:
        return column(results[variant], key) if variant in results else None

    none_rps = samples("no tracking", "requests_per_s")
    assert none_rps is not None

    def of_none(variant: str, key: str) -> str:
        mine, base = samples(variant, key), samples("no tracking", key)
        if mine is None or base is None:
            return f"{variant} not installed"
        return f"{variant} {median(mine) / median(base):.2f}x"

    extra: dict[str, Any] = {
        "clients": settings.host_clients,
        "seconds": settings.host_seconds,
        "warmup_s": settings.host_warmup,
        **{
            f"{slug(variant)}_{key}": column(runs, key)
            for variant, runs in results.items()
            for key in runs[0]
        },
    }
    setup = (
        f"gunicorn, 1 sync worker, ~1 ms of CPU + one track()/capture() per request; "
        f"{settings.host_clients} closed-loop clients in another process for "
        f"{settings.host_seconds:g} s after a {settings.host_warmup:g} s warm-up; every SDK "
        "with default options, sending to the loopback sink"
    )
    peers_rps = ", ".join(
        of_none(v, "requests_per_s") for v in ("Segment", "PostHog", "bare sender")
    )
    peers_p99 = ", ".join(of_none(v, "p99_ms") for v in ("Segment", "PostHog"))
    rows = [
        Row(
            "host_app",
            "app requests/s",
            "req/s",
            column(results["ours"], "requests_per_s"),
            baseline="no tracking",
            baseline_samples=none_rps,
            goal=Goal("ours >= 0.9x no tracking", "ratio", ">=", 0.9),
            digits=0,
            explain=(
                f"{setup}; requests answered / s. Of no tracking: {peers_rps}. Ours "
                f"delivered {median(column(results['ours'], 'delivered_per_s')):.0f} events/s "
                "within the window (median)"
            ),
            extra=extra,
        ),
        Row(
            "host_app",
            "app p99 latency",
            "ms",
            column(results["ours"], "p99_ms"),
            baseline="no tracking",
            baseline_samples=samples("no tracking", "p99_ms"),
            explain=f"99th percentile of the clients' request times. Of no tracking: {peers_p99}",
            extra=extra,
        ),
        Row(
            "host_app",
            "app worker CPU per request",
            "ms",
            column(results["ours"], "worker_cpu_ms_per_request"),
            baseline="no tracking",
            baseline_samples=samples("no tracking", "worker_cpu_ms_per_request"),
            digits=3,
            explain=(
                "CPU time of the gunicorn worker process (all its threads, from /stats read "
                "as the measured window opens and closes) / requests answered within it: "
                "steadier than requests/s on a busy machine. Of no tracking: "
                + ", ".join(of_none(v, "worker_cpu_ms_per_request") for v in ("Segment", "PostHog"))
            ),
            extra=extra,
        ),
    ]

    def against(variant: str, key: str, explain: str, goal: Optional[Goal] = None) -> Row:
        """Ours against another variant of the same runs: requests/s or p99."""
        requests = key == "requests_per_s"
        return Row(
            "host_app",
            "app requests/s" if requests else "app p99 latency",
            "req/s" if requests else "ms",
            column(results["ours"], key),
            baseline=f"{variant} ({'requests/s' if requests else 'p99'})",
            baseline_samples=samples(variant, key),
            goal=goal,
            digits=0 if requests else 2,
            explain=explain,
            extra=extra,
        )

    peer = "the same runs, ours against the peer"
    for variant in ("Segment", "PostHog"):
        goal = Goal(f"ours ahead of {variant} (>= 1.0x)", "ratio", ">=", 1.0)
        rows.append(peer_row(against(variant, "requests_per_s", peer, goal), variant in results))
    rows.append(
        against(
            "bare sender",
            "requests_per_s",
            "the same runs, ours against no SDK: one thread of the app POSTing an event "
            "200 times a second with http.client on one keep-alive connection (encoding "
            "each, reading each answer): about the least one request per event at PX's "
            "rate can cost the app. Of no tracking: " + of_none("bare sender", "requests_per_s"),
        )
    )
    for variant in ("Segment", "PostHog"):
        rows.append(peer_row(against(variant, "p99_ms", peer), variant in results))
    return rows
