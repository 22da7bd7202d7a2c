"""The public names are a contract: adding one is a decision, losing one a break."""

from __future__ import annotations

from importlib.metadata import version

import tracker
import tracker.errors
import tracker.testing


def test_package_exports_exactly_the_documented_names() -> None:
    assert sorted(tracker.__all__) == sorted(
        [
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
    )
    for name in tracker.__all__:
        assert hasattr(tracker, name), name


def test_errors_module_holds_the_hierarchy() -> None:
    errors = tracker.errors
    assert issubclass(errors.ConfigError, errors.TrackerError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.ValidationError, errors.TrackerError)
    assert issubclass(errors.ValidationError, ValueError)
    assert issubclass(errors.QueueFullError, errors.TrackerError)
    assert issubclass(errors.DeliveryError, errors.TrackerError)
    assert tracker.ConfigError is errors.ConfigError


def test_testing_kit_exports() -> None:
    assert sorted(tracker.testing.__all__) == ["FakeClock", "FakePX", "RecordedRequest"]


def test_version_comes_from_package_metadata() -> None:
    assert tracker.__version__ == version("px-tracker")
