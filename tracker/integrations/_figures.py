"""What the metrics integrations read from a tracker: one snapshot, in neutral form."""

from __future__ import annotations

import weakref
from typing import Optional

import attrs

from tracker import _api
from tracker._counters import Stats
from tracker._telemetry import Health
from tracker._tracker import Tracker


@attrs.frozen(kw_only=True)
class Figures:
    stats: Stats
    health: Health
    capacity: int
    #: ``(outcome, reason, count)``: the tracked/delivered/recovered totals (reason "")
    #: and every failed and dropped reason, zeros included, so rates start at zero.
    outcomes: tuple[tuple[str, str, int], ...]
    # Figures only some trackers have (None without a spool / a shared limiter), so that a
    # tracker without them simply has no such metric.
    recovered: Optional[int]
    spooled: Optional[int]
    limiter_fallbacks: Optional[int]


class Source:
    """The tracker an integration reads: the given one (held weakly: a registry lives
    as long as the process and must not keep a tracker from being collected), else the
    process-wide one if it exists, whichever it is at the time (a scrape must not build
    a tracker, nor fail before the application configured one)."""

    def __init__(self, tracker: Optional[Tracker]) -> None:
        self._ref = None if tracker is None else weakref.ref(tracker)

    def get(self) -> Optional[Tracker]:
        if self._ref is None:
            return _api.current()
        return self._ref()


def read(tracker: Tracker) -> Figures:
    stats = tracker.stats()
    # Spool figures only for a tracker with a spool, as the README's metric table says.
    spool = tracker.config.spool is not None
    recovered = stats.recovered if spool else None
    outcomes = [("tracked", "", stats.tracked), ("delivered", "", stats.delivered)]
    if recovered is not None:
        outcomes.append(("recovered", "", recovered))
    outcomes += [("failed", reason, n) for reason, n in sorted(stats.failed_by_reason.items())]
    outcomes += [("dropped", reason, n) for reason, n in sorted(stats.dropped_by_reason.items())]
    return Figures(
        stats=stats,
        health=tracker.health(),
        capacity=tracker.config.max_queue_size,
        outcomes=tuple(outcomes),
        recovered=recovered,
        spooled=stats.spooled if spool else None,
        limiter_fallbacks=_optional(stats, "limiter_fallbacks"),
    )


def _optional(stats: Stats, name: str) -> Optional[int]:
    value = getattr(stats, name, None)
    return value if isinstance(value, int) else None


def missing_extra(module: str, package: str, extra: str) -> ImportError:
    return ImportError(f"{module} needs the {package} package: pip install 'px-tracker[{extra}]'")
