"""px-tracker: reliable background delivery of Gainsight PX custom events."""

from __future__ import annotations

import logging

from tracker._api import (
    aflush,
    ashutdown,
    configure,
    default_tracker,
    flush,
    health,
    shutdown,
    stats,
    track,
)
from tracker._clock import Clock
from tracker._config import Config, OverflowPolicy
from tracker._core import VERSION
from tracker._counters import Stats
from tracker._event import CustomEvent, UserType
from tracker._telemetry import Health, Histogram, LastError
from tracker._tracker import Tracker
from tracker.errors import (
    ConfigError,
    DeliveryError,
    QueueFullError,
    TrackerError,
    ValidationError,
)

__version__ = VERSION

__all__ = [
    "Clock",
    "Config",
    "ConfigError",
    "CustomEvent",
    "DeliveryError",
    "Health",
    "Histogram",
    "LastError",
    "OverflowPolicy",
    "QueueFullError",
    "Stats",
    "Tracker",
    "TrackerError",
    "UserType",
    "ValidationError",
    "__version__",
    "aflush",
    "ashutdown",
    "configure",
    "default_tracker",
    "flush",
    "health",
    "shutdown",
    "stats",
    "track",
]

# A library never configures logging; this only keeps "No handlers" warnings away.
logging.getLogger("tracker").addHandler(logging.NullHandler())
