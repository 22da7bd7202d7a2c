"""The exit case: how long a process with pending events takes to exit, dead server or healthy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from benchmarks._common import (
    HERE,
    Goal,
    Row,
    ServerProcess,
    Settings,
    column,
    dead_url,
    interleave,
)
from benchmarks.cases._shared import (
    all_delivered_row,
)


def _exit_child(base_url: str, n: int, exit_timeout: float, rate: str) -> dict[str, Any]:
    proc = subprocess.Popen(
        # As a module from the repository root: the same tracker as the runner imports.
        [sys.executable, "-m", "benchmarks._exit_child", base_url, str(n), str(exit_timeout), rate],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )
    out, _ = proc.communicate(timeout=exit_timeout + 120)
    exited = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError(f"exit child failed with code {proc.returncode}: {out!r}")
    report: dict[str, Any] = {}
    for line in out.splitlines():
        report.update(json.loads(line))
    report["exit_s"] = exited - report["tracked_at"]
    report["total_s"] = exited - report["started_at"]
    return report


def _exit_dead(n: int, exit_timeout: float) -> dict[str, float]:
    report = _exit_child(dead_url(), n, exit_timeout, "200")
    return {"exit_s": report["exit_s"], "dropped": float(report["dropped"])}


def _exit_healthy(px: ServerProcess, n: int) -> dict[str, float]:
    px.clear()
    report = _exit_child(px.url, n, 120.0, "off")
    server = px.stats()
    px.clear()
    return {
        "exit_s": report["exit_s"],
        "total_s": report["total_s"],
        "delivered": float(server["unique_events"]),
    }


def exit_case(settings: Settings) -> list[Row]:
    n, exit_timeout = settings.exit_events, settings.exit_timeout
    with ServerProcess("fakepx") as px:
        results = interleave(
            "exit",
            settings.reps,
            {
                "dead server": lambda: _exit_dead(n, exit_timeout),
                "healthy sink": lambda: _exit_healthy(px, n),
            },
        )
    dead, healthy = results["dead server"], results["healthy sink"]
    return [
        Row(
            "exit",
            "exit, server dead",
            "s",
            column(dead, "exit_s"),
            baseline="exit_timeout (constant)",
            baseline_value=exit_timeout,
            goal=Goal(
                f"<= exit_timeout + 0.5 s ({exit_timeout + 0.5:g} s)",
                "value",
                "<=",
                exit_timeout + 0.5,
            ),
            explain=(
                f"a subprocess with {n:,} pending events (closed port, exit_timeout="
                f"{exit_timeout:g}): from its last track() to the process being gone"
            ),
            extra={"events": n, "dropped": column(dead, "dropped")},
        ),
        Row(
            "exit",
            "exit, healthy sink: all delivered",
            "s",
            column(healthy, "exit_s"),
            explain=(
                "same with FakePX (own process), rate_limit=None, exit_timeout=120: last "
                "track() to process gone, every event delivered by the at-exit flush"
            ),
            extra={"events": n, "first_track_to_exit_s": column(healthy, "total_s")},
        ),
        all_delivered_row(
            "exit",
            column(healthy, "delivered"),
            n,
            "unique event ids FakePX accepted from the exiting process",
            metric="delivered at exit (worst rep)",
        ),
    ]
