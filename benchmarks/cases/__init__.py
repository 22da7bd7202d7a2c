"""The benchmark cases, one module per case family. Each case takes the Settings and
returns its result Rows; the variants of a case (ours and its baselines) run interleaved
in the same run. ``CASES`` is the registry ``--case`` chooses from, in running order."""

from __future__ import annotations

from typing import Callable

from benchmarks._common import Row, Settings

# The modules, not their functions, are bound here: ``benchmarks.cases.hot_path`` stays
# the module (a function of the same name would shadow it).
from benchmarks.cases import (
    cpu_per_event,
    delivery,
    exit,
    fakepx_capacity,
    host_app,
    hot_path,
    limiters,
    memory,
    observability,
    pacing,
)

CASES: dict[str, Callable[[Settings], list[Row]]] = {
    "hot_path": hot_path.hot_path,
    "memory": memory.memory,
    "delivery": delivery.delivery,
    "pacing": pacing.pacing,
    "exit": exit.exit_case,
    "fakepx_capacity": fakepx_capacity.fakepx_capacity,
    "host_app": host_app.host_app,
    "cpu_per_event": cpu_per_event.cpu_per_event,
    "limiters": limiters.limiters,
    "observability": observability.observability,
}
