"""The benchmark cases, one module per case family. Each case takes the Settings and
returns its result Rows; the variants of a case (ours and its baselines) run interleaved
in the same run. ``CASES`` is the registry ``--case`` chooses from, in running order."""

from __future__ import annotations

from typing import Callable

from benchmarks._common import Row, Settings
from benchmarks.cases.cpu_per_event import cpu_per_event
from benchmarks.cases.delivery import delivery
from benchmarks.cases.exit import exit_case
from benchmarks.cases.fakepx_capacity import fakepx_capacity
from benchmarks.cases.host_app import host_app
from benchmarks.cases.hot_path import hot_path
from benchmarks.cases.memory import memory
from benchmarks.cases.pacing import pacing

CASES: dict[str, Callable[[Settings], list[Row]]] = {
    "hot_path": hot_path,
    "memory": memory,
    "delivery": delivery,
    "pacing": pacing,
    "exit": exit_case,
    "fakepx_capacity": fakepx_capacity,
    "host_app": host_app,
    "cpu_per_event": cpu_per_event,
}
