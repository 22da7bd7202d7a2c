"""Every exception the tracker raises or reports, in one place.

    TrackerError
    ├── ConfigError       (also ValueError)  an option or environment variable out of range
    ├── ValidationError   (also ValueError)  track() refused an event; names the field
    ├── QueueFullError                       no room: overflow "raise", or "block" timed out
    └── DeliveryError                        handed to on_error: this event will never be
                                             delivered (its .reason says why)

None of them ever carries the API key: messages name options and fields, and a server's
message is redacted before it is stored.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "ConfigError",
    "DeliveryError",
    "QueueFullError",
    "TrackerError",
    "ValidationError",
]


class TrackerError(Exception):
    """Base class of every exception of this package."""


class ConfigError(TrackerError, ValueError):
    """An option (or the environment variable behind it) is missing or out of range."""


class ValidationError(TrackerError, ValueError):
    """``track()`` refused an event. ``field`` names the offending field."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.field, self.rule))


class QueueFullError(TrackerError):
    """The queue had no room for the event (overflow "raise", or "block" past its timeout)."""


class DeliveryError(TrackerError):
    """Why an accepted event will never be delivered; passed to ``on_error``.

    ``reason`` is one of the fixed strings counted in ``stats()``: ``rejected``,
    ``unauthorized``, ``retries_exhausted`` (failed) or ``queue_overflow``, ``shutdown``
    (dropped). ``status_code`` is the last HTTP status seen, or None. ``message`` is the
    server's explanation when it gave one (redacted, at most a few hundred characters).
    """

    def __init__(
        self,
        reason: str,
        event_id: str,
        *,
        status_code: Optional[int] = None,
        message: Optional[str] = None,
        attempts: int = 0,
    ) -> None:
        self.reason = reason
        self.event_id = event_id
        self.status_code = status_code
        self.message = message
        self.attempts = attempts
        text = f"event {event_id} not delivered ({reason})"
        if status_code is not None:
            text += f": HTTP {status_code}"
        if message:
            text += f": {message}"
        if attempts:
            text += f" after {attempts} attempt{'s' if attempts != 1 else ''}"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments do not survive the default pickling of exceptions.
        return (
            _rebuild_delivery_error,
            (self.reason, self.event_id, self.status_code, self.message, self.attempts),
        )


def _rebuild_delivery_error(
    reason: str,
    event_id: str,
    status_code: Optional[int],
    message: Optional[str],
    attempts: int,
) -> DeliveryError:
    return DeliveryError(
        reason, event_id, status_code=status_code, message=message, attempts=attempts
    )
