"""Shared pieces of the benchmarks: settings, result rows and goals, server processes,
interleaved repetitions."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Optional

from tracker import Tracker

HERE = Path(__file__).resolve().parent
NOT_INSTALLED = "not installed"
PRODUCT_KEY = "AP-BENCH-1"
API_KEY = "bench-key"
EVENT_NAME = "Report Exported"
IDENTIFY_ID = "user-42"


def attributes() -> dict[str, Any]:
    """The three small attributes every benchmarked event carries (a fresh dict, as an
    application builds one per call)."""
    return {"format": "csv", "rows": 120, "scheduled": False}


def our_tracker(base_url: str, **options: Any) -> Tracker:
    """Ours as the cases build it: the shared keys, no exit flush (each case shuts it down
    itself), otherwise the given options over the defaults."""
    return Tracker(
        API_KEY, product_key=PRODUCT_KEY, base_url=base_url, flush_at_exit=False, **options
    )


def track_many(tracker: Tracker, count: int) -> None:
    """``count`` untimed calls of the benchmarked track(), each with a fresh attributes
    dict. (Timed loops keep the call inline, so no extra frame is measured.)"""
    track = tracker.track
    for _ in range(count):
        track(IDENTIFY_ID, EVENT_NAME, attributes=attributes())


def retrying_tracker(n: int) -> Tracker:
    """Ours against a dead server, tuned only to bring every event quickly to the state
    of waiting for a retry and keep it there: pacing off, a long backoff."""
    return our_tracker(
        dead_url(), max_queue_size=n + 1000, rate_limit=None, backoff_base=30.0, backoff_max=60.0
    )


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the table or the JSON."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    """Sizes and repetitions; ``quick()`` is the smoke-run variant."""

    quick: bool = False
    reps: int = 5
    hot_reps: int = 7  # the cheap cases get more repetitions
    hot_calls: int = 20_000
    memory_events: int = 10_000
    delivery_events: int = 3_000
    pacing_events: int = 2_000
    exit_events: int = 10_000
    exit_timeout: float = 2.0
    capacity_requests: int = 2_000
    host_seconds: float = 3.0  # measured load per host_app repetition, after the warm-up
    # Past ours' first second of sending one at a time (tracker/_pacing.py BURST_WARMUP):
    # the window measures it delivering at its sustained 200/s.
    host_warmup: float = 2.0
    host_clients: int = 4
    cpu_events: int = 3_000  # cpu_per_event, unpaced
    cpu_paced_events: int = 400  # cpu_per_event at 200/s (2 s)
    # Per cell of the limiters table: as many as the closed-loop tests send. A limiter
    # that has to be learned costs one 429 and its 1 s pause, whatever the cell's length:
    # a fifth of a 5 s cell, a tenth of a 10 s one (and nothing, in an app that runs).
    limiter_events: int = 2_000
    limiter_reps: int = 1  # 40 cells of ~10 s each: one repetition, whatever --reps says

    @classmethod
    def full(cls, reps: Optional[int] = None) -> Settings:
        if reps is None:
            return cls()
        return cls(reps=reps, hot_reps=reps)

    @classmethod
    def quick_run(cls, reps: Optional[int] = None) -> Settings:
        n = 3 if reps is None else reps
        return cls(
            quick=True,
            reps=n,
            hot_reps=n,
            hot_calls=5_000,
            memory_events=2_000,
            delivery_events=400,
            pacing_events=500,
            exit_events=1_000,
            exit_timeout=1.0,
            capacity_requests=400,
            host_seconds=1.5,
            cpu_events=400,
            cpu_paced_events=200,
            limiter_events=300,
        )


# -- results ---------------------------------------------------------------------------------


def median(samples: list[float]) -> float:
    return float(statistics.median(samples))


@dataclass(frozen=True)
class Goal:
    """A target on the ratio ours/baseline or on ours' absolute value.

    ``on``: "ratio" or "value"; ``op``: "<=", ">=", "<", "=="; ``stat``: which statistic
    of our samples is judged ("median", or "min"/"max" for must-hold-every-time checks).
    """

    text: str
    on: str
    op: str
    target: float
    stat: str = "median"

    def met(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.target
        if self.op == "<":
            return value < self.target
        if self.op == ">=":
            return value >= self.target
        if self.op == "==":
            return value == self.target
        raise ValueError(self.op)


@dataclass
class Row:
    """One line of the results table: one metric of ours against one baseline.

    The baseline is either measured in the same run (``baseline_samples``), a constant
    (``baseline_value``: a server limit, a timeout, a target) or absent.
    """

    case: str
    metric: str
    unit: str
    ours: list[float]
    baseline: str = "—"
    baseline_samples: Optional[list[float]] = None
    baseline_value: Optional[float] = None
    baseline_status: Optional[str] = None  # e.g. NOT_INSTALLED
    goal: Optional[Goal] = None
    digits: int = 2
    explain: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ours_median(self) -> float:
        return median(self.ours)

    def ours_stat(self, stat: str) -> float:
        if stat == "min":
            return min(self.ours)
        if stat == "max":
            return max(self.ours)
        return self.ours_median

    @property
    def baseline_median(self) -> Optional[float]:
        if self.baseline_samples:
            return median(self.baseline_samples)
        return self.baseline_value

    @property
    def ratio(self) -> Optional[float]:
        base = self.baseline_median
        if base is None or base == 0 or self.baseline_status is not None:
            return None
        return self.ours_median / base

    @property
    def met(self) -> Optional[bool]:
        goal = self.goal
        if goal is None:
            return None
        if goal.on == "ratio":
            ratio = self.ratio
            return None if ratio is None else goal.met(ratio)
        return goal.met(self.ours_stat(goal.stat))

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "metric": self.metric,
            "unit": self.unit,
            "ours": {"median": self.ours_median, "samples": self.ours},
            "baseline": {
                "name": self.baseline,
                "status": self.baseline_status or "ok",
                "median": None if self.baseline_status else self.baseline_median,
                "samples": self.baseline_samples,
                "constant": self.baseline_samples is None,
            },
            "ratio": self.ratio,
            "goal": None if self.goal is None else asdict(self.goal),
            "met": self.met,
            "digits": self.digits,
            "explain": self.explain,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        """The inverse of ``to_json`` (to re-render a saved run)."""
        base = data["baseline"]
        status = None if base["status"] == "ok" else base["status"]
        constant = base["constant"] and status is None
        return cls(
            data["case"],
            data["metric"],
            data["unit"],
            data["ours"]["samples"],
            baseline=base["name"],
            baseline_samples=base["samples"],
            baseline_value=base["median"] if constant else None,
            baseline_status=status,
            goal=None if data["goal"] is None else Goal(**data["goal"]),
            digits=data["digits"],
            explain=data["explain"],
            extra=data["extra"],
        )


# -- interleaved repetitions -------------------------------------------------------------------

Variant = Callable[[], dict[str, float]]


def interleave(
    case: str, reps: int, variants: dict[str, Variant]
) -> dict[str, list[dict[str, float]]]:
    """Run every variant once per repetition, rotating the order each time (A B C,
    B C A, C A B, ...), so that drifting machine load hits all of them alike."""
    names = list(variants)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            metrics = variants[name]()
            results[name].append(metrics)
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            log(
                f"  [{case}] rep {rep + 1}/{reps} {name}: {shown} "
                f"({time.perf_counter() - started:.1f}s)"
            )
    return results


def column(results: list[dict[str, float]], key: str) -> list[float]:
    return [metrics[key] for metrics in results]


# -- servers in their own process --------------------------------------------------------------


class ServerProcess:
    """``_server.py`` in a child process: FakePX (optionally with a rate limit and
    latency, and Retry-After on its 429s: "1" by default, None for none) or the minimal
    sink; stats and clear through its stdin/stdout."""

    def __init__(
        self,
        kind: str,
        *,
        rate_limit: Optional[float] = None,
        latency: float = 0.0,
        retry_after: Optional[str] = "1",
    ) -> None:
        # As a module from the repository root, so it imports the same tracker as the
        # runner (the tree's), whatever is installed.
        args = [sys.executable, "-m", "benchmarks._server", kind]
        if rate_limit is not None:
            args += ["--rate-limit", str(rate_limit)]
        if latency:
            args += ["--latency", str(latency)]
        if retry_after != "1":
            args += ["--retry-after", "none" if retry_after is None else retry_after]
        self._args = args
        self._proc: Optional[subprocess.Popen[str]] = None
        self.port = 0

    def __enter__(self) -> ServerProcess:
        proc = subprocess.Popen(
            self._args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=HERE.parent,
        )
        self._proc = proc
        line = self._stdout().readline()
        if not line.strip().isdigit():
            proc.kill()
            raise RuntimeError(f"benchmark server did not start (said {line!r})")
        self.port = int(line)
        return self

    def _stdout(self) -> IO[str]:
        assert self._proc is not None
        assert self._proc.stdout is not None
        return self._proc.stdout

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, name: str) -> dict[str, Any]:
        assert self._proc is not None
        assert self._proc.stdin is not None
        self._proc.stdin.write(name + "\n")
        self._proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._stdout().readline())
        return answer

    def stats(self) -> dict[str, Any]:
        return self.command("stats")

    def clear(self) -> None:
        self.command("clear")

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.write("quit\n")
            proc.stdin.close()
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def dead_url() -> str:
    """A loopback URL nobody listens on: a port we bound and closed (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
