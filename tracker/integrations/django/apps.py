"""The Django app: ``ready()`` configures the process-wide tracker from ``PX_TRACKER``."""

from __future__ import annotations

from collections.abc import Mapping

from tracker import _api
from tracker.integrations._figures import missing_extra

try:
    from django.apps import AppConfig
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
except ImportError as exc:  # the extra is not installed
    raise missing_extra("tracker.integrations.django", "django", "django") from exc

__all__ = ["SETTING", "PxTrackerConfig"]

#: The settings name of the dict of Tracker options.
SETTING = "PX_TRACKER"


class PxTrackerConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    name = "tracker.integrations.django"
    label = "px_tracker"
    verbose_name = "px-tracker"

    def ready(self) -> None:
        options = getattr(settings, SETTING, None)
        if options is None:
            return  # built from the PX_* environment on first use
        if not isinstance(options, Mapping):
            raise ImproperlyConfigured(
                f"{SETTING} must be a dict of Tracker options (got {type(options).__name__})"
            )
        try:
            _api.configure(**options)
        except (ValueError, TypeError) as exc:  # ConfigError, or an unknown option
            raise ImproperlyConfigured(f"{SETTING}: {exc}") from exc
